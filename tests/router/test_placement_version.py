"""Issue 13, point 4: a placement version survives a Redis restart. A real redis-server is stopped and
started again (empty: no persistence); the placer's store numbers its next publish past every version it
published before, so workers and routers, which ignore versions at or below their own, take it."""

from __future__ import annotations

import redis.asyncio as aioredis

from services.placer import placement as pl
from services.placer.store import PlacementStore


def _placement(model: str) -> pl.Placement:
    return pl.Placement("muxserve", 1.0, [pl.Unit("u0", [0], [pl.LLMPlacement(model, 1.0, 0.5)],
                                                 worker_address="127.0.0.1:1")])


async def test_version_keeps_growing_across_a_redis_restart(own_redis):
    r = aioredis.from_url(own_redis.url)
    store = PlacementStore(r)
    assert [await store.publish(_placement("a")) for _ in range(3)] == [1, 2, 3]
    own_redis.stop()
    own_redis.start()  # empty: the version key is gone; the same client reconnects
    try:
        await r.ping()
    except aioredis.ConnectionError:  # the connection the restart broke; the next one is new
        await r.ping()
    assert await store.get() is None
    assert await store.publish(_placement("b")) == 4
    got = await store.get()
    assert got.version == 4 and got.units[0].llms[0].name == "b"
    fresh = PlacementStore(r)  # another placer process: reads the stored version, publishes past it
    assert (await fresh.get()).version == 4 and await fresh.publish(_placement("c")) == 5
    await r.aclose()
