"""PopularityStore and PopularityRecorder against a real redis-server."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from muxserve.popularity import KEY_PREFIX, PopularityRecorder, PopularityStore


def client(url: str) -> aioredis.Redis:
    return aioredis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)


async def test_counts_and_token_sums_in_window(redis_url):
    r = client(redis_url)
    store = PopularityStore(r, bucket_s=1.0, ttl_s=60)
    t0 = 1_000_000.0
    for i in range(5):
        await store.record("a", prompt_tokens=10 + i, now=t0 + i)  # one per second, t0..t0+4
    await store.record("b", prompt_tokens=7, output_tokens=3, now=t0 + 4)
    await store.record_output("a", 20, now=t0 + 4.5)

    assert await store.stats("a", 5, now=t0 + 4.5) == {
        "requests": 5, "prompt_tokens": 60, "output_tokens": 20, "rate": 1.0}
    # Last 2 s cover buckets t0+3 and t0+4 only.
    assert await store.stats("a", 2, now=t0 + 4.5) == {
        "requests": 2, "prompt_tokens": 27, "output_tokens": 20, "rate": 1.0}
    assert (await store.stats("b", 5, now=t0 + 4.5))["output_tokens"] == 3
    await r.aclose()


async def test_rates_over_windows(redis_url):
    r = client(redis_url)
    store = PopularityStore(r, bucket_s=0.5, ttl_s=60)
    t0 = 2_000_000.0
    for i in range(20):  # model a: 4 arrivals/s for 5 s
        await store.record("a", 1, now=t0 + i * 0.25)
    await store.record("b", 1, now=t0 + 4.9)
    rates = await store.rates(["a", "b", "never-seen"], window_s=5, now=t0 + 4.99)
    assert rates == {"a": pytest.approx(4.0), "b": pytest.approx(0.2), "never-seen": 0.0}
    # A window that ended before anything arrived sees nothing; one far later sees nothing either.
    assert (await store.rates(["a"], 5, now=t0 - 1))["a"] == 0.0
    assert (await store.rates(["a"], 5, now=t0 + 100))["a"] == 0.0
    # A 1 s window at the end: buckets t0+4.0 and t0+4.5 hold i=16..19.
    assert (await store.rates(["a"], 1, now=t0 + 4.99))["a"] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="window_s"):
        await store.rates(["a"], 0)
    await r.aclose()


async def test_keys_expire(redis_url):
    r = client(redis_url)
    store = PopularityStore(r, bucket_s=1.0, ttl_s=120)
    await store.record("m", 5)
    keys = [k async for k in r.scan_iter(f"{KEY_PREFIX}m:*")]
    assert len(keys) == 1
    ttl = await r.ttl(keys[0])
    assert 0 < ttl <= 120
    await store.record_output("m", 9)  # refreshes the TTL, same bucket or the next
    for k in [k async for k in r.scan_iter(f"{KEY_PREFIX}m:*")]:
        assert 0 < await r.ttl(k) <= 120

    short = PopularityStore(r, bucket_s=1.0, ttl_s=1)
    await short.record("gone", 1)
    await asyncio.sleep(2.2)
    assert [k async for k in r.scan_iter(f"{KEY_PREFIX}gone:*")] == []
    await r.aclose()


async def test_recorder_writes_in_background(redis_url):
    r = client(redis_url)
    store = PopularityStore(r, ttl_s=60)
    rec = PopularityRecorder(store)
    rec.start()
    for _ in range(30):
        rec.record("x", 4)
    rec.record_output("x", 11)
    await rec.close()
    assert rec.written == 31 and rec.dropped == 0
    stats = await store.stats("x", 60)
    assert (stats["requests"], stats["prompt_tokens"], stats["output_tokens"]) == (30, 120, 11)
    await r.aclose()


async def _until(cond, timeout_s: float = 10.0) -> None:
    """Poll cond every 50 ms until it holds or timeout_s passes (the caller asserts it)."""
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def test_recorder_survives_redis_outage_and_reconnects(own_redis):
    r = client(own_redis.url)
    store = PopularityStore(r, ttl_s=60)
    rec = PopularityRecorder(store, timeout_s=0.3, retry_s=0.1, max_retry_s=0.2)
    rec.start()
    rec.record("m", 1)
    await _until(lambda: rec.written == 1)
    assert rec.written == 1

    own_redis.stop()
    for _ in range(1000):
        rec.record("m", 1)  # plain (non-async) calls: they cannot wait on Redis, and must not raise
        rec.record_output("m", 2)
    await _until(lambda: not rec.healthy and rec.dropped == 2000)  # a loaded machine needs more than 0.5 s
    assert not rec.healthy and rec.dropped == 2000

    own_redis.start()  # same port: Redis returns
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rec.record("m", 1)
        await asyncio.sleep(0.1)
        if rec.healthy and rec.written > 1:
            break
    assert rec.healthy and rec.written > 1
    await rec.close()
    # The restarted server starts empty (no persistence): it holds what was written after it returned.
    assert (await store.stats("m", 60))["requests"] == rec.written - 1
    await r.aclose()
