"""Running the n x prompts requests of one OpenAI call through RouterCore, as plain pieces.

`start(core, reqs)` admits every request first (validation errors surface before anything runs) and
returns a `Run`. `Run.events()` yields `(choice index, Piece)` as chunks arrive from any choice (one
request streams directly; several are merged through tasks); a choice that fails raises its
RouterError from the iterator, and closing the iterator cancels what still runs (its worker calls
end, their KV blocks return). `Run.collect()` waits for every choice and returns their results.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator

from services.router.core import RouterCore
from services.router.request import RouteRequest


@dataclass
class Piece:
    """What one chunk of one choice adds (usage fields on its last piece)."""

    text: str
    num_tokens: int
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Choice:
    text: str = ""
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, p: Piece) -> None:
        self.text += p.text
        if p.finish_reason:
            self.finish_reason = p.finish_reason
            self.prompt_tokens, self.completion_tokens = p.prompt_tokens, p.completion_tokens


def piece(resp) -> Piece:
    """A router_pb2.GenerateResponse as a Piece (the HTTP front's only look at protobuf)."""
    u = resp.usage
    return Piece(resp.text, len(resp.token_ids), resp.finish_reason, u.prompt_tokens, u.completion_tokens)


class Run:
    def __init__(self, core: RouterCore, reqs: list[RouteRequest]):
        self.core, self.reqs = core, reqs

    async def events(self) -> AsyncIterator[tuple[int, Piece]]:
        if len(self.reqs) == 1:
            stream = self.core.stream(self.reqs[0])
            try:
                async for resp in stream:
                    yield 0, piece(resp)
            finally:
                await stream.aclose()
            return
        async for item in self._merged():
            yield item

    async def _merged(self) -> AsyncIterator[tuple[int, Piece]]:
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, req: RouteRequest) -> None:
            try:
                async for resp in self.core.stream(req):
                    queue.put_nowait((i, piece(resp)))
                queue.put_nowait((i, None))
            except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
                queue.put_nowait((i, exc))

        tasks = [asyncio.ensure_future(pump(i, r)) for i, r in enumerate(self.reqs)]
        try:
            left = len(tasks)
            while left:
                i, item = await queue.get()
                if item is None:
                    left -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield i, item
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def collect(self) -> list[Choice]:
        choices = [Choice() for _ in self.reqs]
        events = self.events()
        try:
            async for i, p in events:
                choices[i].add(p)
        finally:
            await events.aclose()
        return choices


def start(core: RouterCore, reqs: list[RouteRequest]) -> Run:
    for req in reqs:
        core.admit(req)
    return Run(core, reqs)
