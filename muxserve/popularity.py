"""Per-model arrival statistics in Redis: request counts and token sums in time buckets.

Layout: time is cut into buckets of `bucket_s` seconds (bucket = floor(t / bucket_s)); SEGMENT
consecutive buckets of one model share one hash, which also keeps the segment's totals, so a long
window costs one small read per segment instead of one per bucket:

    muxserve:pop:<model>:<segment>  ->  {"<bucket>:req", "<bucket>:prompt", "<bucket>:output",
                                         "req", "prompt", "output"}         EXPIRE ttl_s (per write)

with segment = bucket // SEGMENT. A window of W seconds ending at `now` covers the ceil(W / bucket_s)
most recent buckets, the current (partial) one included; its rate is requests / W. Output tokens are
known when a request ends, so `record_output` adds them to the bucket of the time they are reported.

`PopularityStore` talks to Redis directly (the placer reads `rates` with it). The router uses
`PopularityRecorder`: `record`/`record_output` only enqueue and return at once; a background task
writes batches with a short timeout and drops (and counts) what it cannot write while Redis is down,
retrying with backoff, so a Redis outage never fails or delays a request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

log = logging.getLogger(__name__)

KEY_PREFIX = "muxserve:pop:"
FIELDS = ("req", "prompt", "output")
SEGMENT = 60  # buckets per hash


@dataclass(frozen=True)
class Arrival:
    """One statistics update: `requests` arrivals (0 for an output-only update) and token sums."""

    model: str
    requests: int = 1
    prompt_tokens: int = 0
    output_tokens: int = 0
    at: float | None = None  # unix seconds; None = now


class PopularityStore:
    """Time-bucketed per-model counters in Redis. Every method raises redis errors to the caller."""

    def __init__(self, redis: aioredis.Redis, bucket_s: float = 1.0, ttl_s: float = 3600):
        if bucket_s <= 0 or ttl_s <= 0:
            raise ValueError(f"bucket_s and ttl_s must be > 0, got {bucket_s}, {ttl_s}")
        self.redis = redis
        self.bucket_s = float(bucket_s)
        self.ttl_s = max(1, math.ceil(ttl_s))

    def key(self, model: str, segment: int) -> str:
        return f"{KEY_PREFIX}{model}:{segment}"

    def bucket(self, t: float) -> int:
        return math.floor(t / self.bucket_s)

    async def record(self, model: str, prompt_tokens: int, output_tokens: int = 0,
                     now: float | None = None) -> None:
        """Count one arrival of `model` with its prompt (and, if known, output) token counts."""
        await self.record_batch([Arrival(model, 1, prompt_tokens, output_tokens, now)])

    async def record_output(self, model: str, output_tokens: int, now: float | None = None) -> None:
        """Add the output tokens of a finished request (no new arrival)."""
        await self.record_batch([Arrival(model, 0, 0, output_tokens, now)])

    async def record_batch(self, arrivals: list[Arrival]) -> None:
        """Write many updates in one round trip; every touched key gets the TTL again."""
        if not arrivals:
            return
        wall = time.time()
        pipe = self.redis.pipeline(transaction=False)
        for a in arrivals:
            b = self.bucket(wall if a.at is None else a.at)
            key = self.key(a.model, b // SEGMENT)
            for name, value in zip(FIELDS, (a.requests, a.prompt_tokens, a.output_tokens)):
                if value:
                    pipe.hincrby(key, f"{b}:{name}", int(value))
                    pipe.hincrby(key, name, int(value))
            pipe.expire(key, self.ttl_s)
        await pipe.execute()

    def window_buckets(self, window_s: float, now: float) -> range:
        """The buckets a window of `window_s` seconds ending at `now` covers (newest included)."""
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        last = self.bucket(now)
        count = min(math.ceil(window_s / self.bucket_s), math.ceil(self.ttl_s / self.bucket_s) + SEGMENT)
        return range(last - count + 1, last + 1)

    async def _sums(self, models: list[str], window_s: float, now: float | None) -> dict[str, list[int]]:
        """[requests, prompt, output] per model: segment totals where a whole segment is inside the
        window, per-bucket fields of the (at most two) segments cut by its edges."""
        buckets = self.window_buckets(window_s, time.time() if now is None else now)
        segments = range(buckets[0] // SEGMENT, buckets[-1] // SEGMENT + 1)
        pipe = self.redis.pipeline(transaction=False)
        for model in models:
            for seg in segments:
                inside = seg * SEGMENT >= buckets[0] and (seg + 1) * SEGMENT - 1 <= buckets[-1]
                (pipe.hmget(self.key(model, seg), FIELDS) if inside else pipe.hgetall(self.key(model, seg)))
        replies = iter(await pipe.execute())
        sums = {}
        for model in models:
            total = [0, 0, 0]
            for _ in segments:
                reply = next(replies)
                part = _edge_sums(reply, buckets) if isinstance(reply, dict) else [int(v or 0) for v in reply]
                total = [t + p for t, p in zip(total, part)]
            sums[model] = total
        return sums

    async def rates(self, models: list[str], window_s: float, now: float | None = None) -> dict[str, float]:
        """Arrival rate (requests/s) of each model over the last `window_s` seconds."""
        sums = await self._sums(list(models), window_s, now)
        return {m: s[0] / window_s for m, s in sums.items()}

    async def stats(self, model: str, window_s: float, now: float | None = None) -> dict:
        """{requests, prompt_tokens, output_tokens, rate} of `model` over the last `window_s` s."""
        req, prompt, output = (await self._sums([model], window_s, now))[model]
        return {"requests": req, "prompt_tokens": prompt, "output_tokens": output, "rate": req / window_s}


def _edge_sums(fields: dict, buckets: range) -> list[int]:
    """Sum the per-bucket fields ("<bucket>:<name>") of one segment's hash that fall in `buckets`."""
    total = [0, 0, 0]
    for raw_key, value in fields.items():
        key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
        bucket, sep, name = key.partition(":")
        if sep and int(bucket) in buckets:
            total[FIELDS.index(name)] += int(value)
    return total


class PopularityRecorder:
    """Fire-and-forget front of a PopularityStore for the request path.

    `record`/`record_output` never block and never raise: they enqueue (dropping when the queue is
    full). `start()` launches the flusher; each batch is written with `timeout_s`; while Redis is down
    batches are dropped and counted in `dropped`, and a write is retried after a backoff that grows
    from `retry_s` to `max_retry_s`. Redis returning is noticed at the next retry.
    """

    def __init__(self, store: PopularityStore, timeout_s: float = 0.5, max_queue: int = 10000,
                 max_batch: int = 512, retry_s: float = 0.2, max_retry_s: float = 5.0):
        self.store = store
        self.timeout_s = timeout_s
        self.max_batch = max_batch
        self.retry_s, self.max_retry_s = retry_s, max_retry_s
        self.queue: asyncio.Queue[Arrival] = asyncio.Queue(max_queue)
        self.dropped = 0
        self.written = 0
        self.healthy = True
        self._backoff = retry_s
        self._retry_at = 0.0
        self._task: asyncio.Task | None = None

    def record(self, model: str, prompt_tokens: int, output_tokens: int = 0) -> None:
        self._put(Arrival(model, 1, prompt_tokens, output_tokens, time.time()))

    def record_output(self, model: str, output_tokens: int, prompt_tokens: int = 0) -> None:
        """At a request's end: its output tokens, and its prompt tokens if unknown at arrival (text)."""
        if output_tokens > 0 or prompt_tokens > 0:
            self._put(Arrival(model, 0, prompt_tokens, output_tokens, time.time()))

    def _put(self, arrival: Arrival) -> None:
        try:
            self.queue.put_nowait(arrival)
        except asyncio.QueueFull:
            self.dropped += 1

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="popularity-flush")

    async def close(self, flush_timeout_s: float = 1.0) -> None:
        """Try to write what is queued (bounded by flush_timeout_s), then stop the flusher."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self.queue.join(), flush_timeout_s)
        except asyncio.TimeoutError:
            pass
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                await self._flush(batch)
            finally:
                for _ in batch:
                    self.queue.task_done()

    async def _flush(self, batch: list[Arrival]) -> None:
        loop = asyncio.get_running_loop()
        if not self.healthy and loop.time() < self._retry_at:
            self.dropped += len(batch)
            return
        try:
            await asyncio.wait_for(self.store.record_batch(batch), self.timeout_s)
        except (aioredis.RedisError, OSError, asyncio.TimeoutError) as exc:
            self.dropped += len(batch)
            if self.healthy:
                log.warning("popularity: redis unavailable (%s); dropping records until it returns", exc)
            self.healthy = False
            self._retry_at = loop.time() + self._backoff
            self._backoff = min(self._backoff * 2, self.max_retry_s)
            return
        if not self.healthy:
            log.info("popularity: redis is back (%d records dropped so far)", self.dropped)
        self.healthy, self._backoff = True, self.retry_s
        self.written += len(batch)
