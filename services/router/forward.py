"""Forwarding a validated request to a worker hosting its model, streaming the worker's chunks back.

Contract of `Forwarder.stream(req)`: yields the worker's `GenerateResponse` messages unchanged, in
order. Before the first chunk, a request whose model has no reachable host (no worker in the
placement, a worker down, or one answering UNAVAILABLE because it is still loading or draining the
model during a re-placement) is retried against the then-current placement, with backoff, for up to
`unavailable_wait_s`; after that it raises Unavailable. A failure after the first chunk is never
retried (tokens were already streamed). A worker answering FAILED_PRECONDITION (the model failed to load
there) passes the request to the model's next host; from its last host that status is the answer. Any other
worker status is re-raised as a RouterError with
the worker's code and message unchanged. A model the placer left out (its checkpoint cannot be read) answers
FAILED_PRECONDITION with the placer's reason at once. Closing the iterator early (the client
cancelled) cancels the worker call, so the worker aborts the sequence and frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

import grpc

from muxserve.v1 import router_pb2, worker_pb2_grpc
from services.router.convert import worker_request
from services.router.request import RouteRequest, RouterError, Unavailable
from services.router.routing import RoutingTable

log = logging.getLogger(__name__)


class WorkerClients:
    """One channel (and stub) per worker address, opened on first use."""

    def __init__(self):
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, worker_pb2_grpc.WorkerStub] = {}

    def stub(self, address: str) -> worker_pb2_grpc.WorkerStub:
        if address not in self._stubs:
            self._channels[address] = grpc.aio.insecure_channel(address, options=[
                ("grpc.max_receive_message_length", 64 << 20)])
            self._stubs[address] = worker_pb2_grpc.WorkerStub(self._channels[address])
        return self._stubs[address]

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._stubs.clear()


class Forwarder:
    def __init__(self, table: RoutingTable, clients: WorkerClients, unavailable_wait_s: float = 30.0):
        self.table = table
        self.clients = clients
        self.unavailable_wait_s = unavailable_wait_s

    async def stream(self, req: RouteRequest) -> AsyncIterator[router_pb2.GenerateResponse]:
        deadline = time.monotonic() + self.unavailable_wait_s
        backoff = 0.05
        while True:
            try:
                async for resp in self._once(req):
                    yield resp
                return
            except Unavailable as exc:
                if req.worker or time.monotonic() + backoff > deadline:
                    raise
                log.info("%s: %s; retrying for up to %.1fs more", req.request_id, exc,
                         deadline - time.monotonic())
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _once(self, req: RouteRequest) -> AsyncIterator[router_pb2.GenerateResponse]:
        """One pass over the model's current hosts, least loaded first."""
        candidates = self.table.candidates(req.model)
        if not candidates and req.model in self.table.view.failed:
            raise RouterError(f"model {req.model!r} cannot be served: {self.table.view.failed[req.model]}",
                              grpc.StatusCode.FAILED_PRECONDITION)
        if not candidates:
            raise Unavailable(f"model {req.model!r} is not hosted on any worker yet "
                              f"(placement version {self.table.version}); retry later")
        for i, address in enumerate(candidates):
            last = i == len(candidates) - 1
            async for resp in self._try_worker(req, address, last):
                yield resp
            if req.worker:
                return

    async def _try_worker(self, req: RouteRequest, address: str, last: bool):
        """Stream from `address`; return quietly (req.worker unset) to let the caller try the next one."""
        started = False
        with self.table.acquire(address):
            req.forwarded_at = time.monotonic()
            call = self.clients.stub(address).Generate(worker_request(req))
            try:
                async for resp in call:
                    started, req.worker = True, address
                    req.observe(len(resp.token_ids), resp.finish_reason, resp.usage.prompt_tokens,
                                resp.usage.completion_tokens)
                    if resp.finish_reason:
                        u = resp.usage
                        (u.queue_time_s, u.time_to_first_token_s, u.time_per_output_token_s,
                         u.e2e_latency_s) = req.timing(u.queue_time_s)
                    yield resp
                req.worker = address
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and not (started or last):
                    log.warning("worker %s cannot serve %s: %s; trying the next host", address, req.model,
                                exc.details())
                    return  # the model failed to load there; another host of it may serve
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise RouterError(exc.details() or exc.code().name, exc.code()) from None
                log.warning("worker %s unavailable for %s: %s", address, req.request_id, exc.details())
                if started or last:
                    raise Unavailable(f"worker {address} hosting model {req.model!r} is unavailable: "
                                      f"{exc.details()}") from None
            finally:
                call.cancel()  # no-op when the call is done; otherwise aborts the worker's sequence
