"""AsyncUnitEngine: the UnitEngine for an asyncio servicer.

The step loop runs in one background thread, so model compute never blocks the event loop; chunks
cross back with `loop.call_soon_threadsafe`; admission (tokenization, chat templates) runs in a
thread too. `generate` raises add_request's errors (UnknownModelError, InvalidRequestError,
CapacityError) on the first iteration, before any chunk.
If the consumer stops iterating or is cancelled, the request is aborted and its blocks return.
A request that fails inside the engine ends with a chunk whose finish_reason is "error" (its
`error`, an EngineError, says why; the worker's servicer ends the stream with its status code).
A consumer that falls behind gets what queued up meanwhile as one chunk (tokens and text in order,
the latest finish_reason and usage), so a loaded worker sends fewer, larger messages instead of
queueing one per token; one that keeps up gets a chunk per step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator

from services.worker.engine.admission import merge_chunks
from services.worker.engine.config import EngineConfig, LLMConfig
from services.worker.engine.engine import UnitEngine
from services.worker.engine.types import Chunk, InvalidRequestError, SamplingParams

log = logging.getLogger(__name__)


class AsyncUnitEngine:
    def __init__(self, engine: UnitEngine):
        self.engine = engine
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="unit-engine-loop", daemon=True)
        self._thread.start()

    @classmethod
    async def create(cls, llms: list[LLMConfig], config: EngineConfig | None = None, **kwargs) -> "AsyncUnitEngine":
        """Load the engine in a worker thread (loading weights takes a while), then start the loop."""
        engine = await asyncio.to_thread(UnitEngine, llms, config, **kwargs)
        return cls(engine)

    # ---- the background loop ----------------------------------------------------------------
    def _run(self) -> None:
        while not self._closing:
            if not self.engine.has_unfinished():
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            try:
                chunks = self.engine.step()
            except Exception:  # a bug, not a request error: keep the loop (and the service) alive
                log.exception("engine step failed")
                time.sleep(0.05)  # a failure that persists must not spin the loop
                continue
            self._deliver_all(chunks)

    def _deliver_all(self, chunks: dict[str, Chunk]) -> None:
        """Hand a step's chunks to their streams: one wake-up of each event loop per step, not per chunk."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[str, asyncio.Queue, Chunk]]] = {}
        for rid, ch in chunks.items():
            entry = self._queues.get(rid)
            if entry is not None:
                by_loop.setdefault(entry[0], []).append((rid, entry[1], ch))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # its event loop is closed
                for rid, _, _ in items:
                    self._queues.pop(rid, None)

    # ---- requests ---------------------------------------------------------------------------
    async def generate(self, request_id: str, llm: str, prompt: str | list[dict] | None = None,
                       prompt_token_ids: list[int] | None = None, sampling: SamplingParams | None = None,
                       add_special_tokens: bool | None = None) -> AsyncIterator[Chunk]:
        """Stream the request's chunks; the last has a finish_reason (UnitEngine.add_request's args)."""
        if request_id in self._queues:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        q: asyncio.Queue = asyncio.Queue()
        self._queues[request_id] = (asyncio.get_running_loop(), q)
        finished = False
        try:
            await self._add(request_id, llm, prompt, prompt_token_ids, sampling, add_special_tokens)
            self._wake.set()
            while not finished:
                ch = await q.get()
                while not ch.finish_reason and not q.empty():  # the consumer fell behind: one chunk
                    ch = merge_chunks(ch, q.get_nowait())
                finished = bool(ch.finish_reason)
                yield ch
        finally:
            self._queues.pop(request_id, None)
            if not finished:
                self.engine.abort(request_id)
                self._wake.set()

    async def _add(self, *args) -> None:
        """engine.add_request in a thread: tokenizing and rendering a chat template are CPU work that
        must not stall the event loop. A cancelled caller still waits for the add to land (so that
        its abort, which follows, finds the request)."""
        add = asyncio.ensure_future(asyncio.to_thread(self.engine.add_request, *args))
        try:
            await asyncio.shield(add)
        except asyncio.CancelledError:
            await asyncio.gather(add, return_exceptions=True)
            raise

    async def abort(self, request_id: str) -> None:
        self.engine.abort(request_id)
        self._wake.set()

    # ---- LLMs and stats ---------------------------------------------------------------------
    async def add_llm(self, cfg: LLMConfig, quota: int | None = None) -> None:
        await asyncio.to_thread(self.engine.add_llm, cfg, quota)

    async def remove_llm(self, name: str, drain: bool = True) -> None:
        """Stop taking requests for `name`, let its requests finish (or abort them), then drop it."""
        self.engine.begin_remove(name, drain)
        self._wake.set()
        while self.engine.scheduler.has_unfinished(name):
            await asyncio.sleep(0.01)
        await asyncio.to_thread(self.engine.finish_remove, name)

    def stats(self) -> dict:
        return self.engine.stats()

    async def close(self) -> None:
        """Stop the loop (aborting what is left) and close the jobs."""
        self._closing = True
        self._wake.set()
        await asyncio.to_thread(self._thread.join)
        for rid in list(self._queues):  # wake streams still waiting: they end with "abort"
            self.engine.abort(rid)
        self._deliver_all({rid: Chunk(finish_reason="abort") for rid in list(self._queues)})
        await asyncio.to_thread(self.engine.close)


def _put_all(items: list[tuple[str, asyncio.Queue, Chunk]]) -> None:
    for _, q, ch in items:
        q.put_nowait(ch)
