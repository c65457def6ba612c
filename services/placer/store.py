"""The placement in Redis, and an in-process fan-out of new versions to watchers.

Keys: `muxserve:placement` (the placement as JSON), `muxserve:placement:version` (an integer,
incremented per publish). Publishing is one Lua script (INCR, SET, PUBLISH the new version on
channel `muxserve:placement`), so readers never see a placement with another version's number.
Versions only grow, also across a Redis restart that lost the keys: the store remembers the highest
version it published or read, and a publish is numbered past it (workers and routers ignore versions
at or below their own).
"""

from __future__ import annotations

import asyncio
import json
import logging

import redis.asyncio as aioredis

from .placement import Placement

log = logging.getLogger(__name__)

PLACEMENT_KEY = "muxserve:placement"
VERSION_KEY = "muxserve:placement:version"
CHANNEL = "muxserve:placement"

_PUBLISH = """
local v = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if v <= floor then
  v = floor + 1
  redis.call('SET', KEYS[2], v)
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], v)
return v
"""


class PlacementStore:
    def __init__(self, redis: aioredis.Redis):
        self.redis = redis
        self._publish = redis.register_script(_PUBLISH)
        self.last_version = 0  # the highest version published or read here

    async def publish(self, placement: Placement) -> int:
        """Store `placement` as the next version; sets and returns placement.version."""
        doc = json.dumps({**placement.to_dict(), "version": 0})
        floor = max(self.last_version, placement.version)
        placement.version = int(await self._publish(keys=[PLACEMENT_KEY, VERSION_KEY], args=[doc, CHANNEL, floor]))
        self.last_version = max(self.last_version, placement.version)
        return placement.version

    async def get(self) -> Placement | None:
        doc, version = await self.redis.mget(PLACEMENT_KEY, VERSION_KEY)
        if doc is None:
            return None
        p = Placement.from_dict(json.loads(doc))
        p.version = int(version or 0)
        self.last_version = max(self.last_version, p.version)
        return p


class PlacementFeed:
    """The latest placement seen in Redis; `wait_newer(v)` returns the first version > v.

    One Redis subscription per process feeds any number of watchers (gRPC WatchPlacement streams).
    """

    def __init__(self, store: PlacementStore):
        self.store = store
        self.latest: Placement | None = None
        self._changed = asyncio.Condition()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        pubsub = self.store.redis.pubsub()
        await pubsub.subscribe(CHANNEL)
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._listen(pubsub), name="placement-feed")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def refresh(self) -> None:
        p = await self.store.get()
        if p is not None and (self.latest is None or p.version > self.latest.version):
            await self.offer(p)

    async def offer(self, p: Placement) -> None:
        """Take `p` if newer than what watchers have, and wake them."""
        async with self._changed:
            if self.latest is None or p.version > self.latest.version:
                self.latest = p
                self._changed.notify_all()

    async def wait_newer(self, version: int) -> Placement:
        async with self._changed:
            await self._changed.wait_for(lambda: self.latest is not None and self.latest.version > version)
            return self.latest

    async def _listen(self, pubsub) -> None:
        try:
            while True:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is not None:
                    await self.refresh()
        except asyncio.CancelledError:
            await pubsub.aclose()
            raise
        except Exception:  # keep serving what we have; a later refresh catches up
            log.exception("placement feed: subscription failed")
