"""Real gRPC servers the router tests talk to (kept minimal on purpose).

`EchoWorker` is a real grpc.aio server implementing muxserve.v1.Worker, NOT the engine: for a
token-id prompt it streams the prompt's ids back (cycling) one token per chunk until max_tokens,
then a last chunk with finish_reason "length" and usage. Model "slow" waits `delay_s` per token. A
text prompt longer than `max_prompt_chars` is rejected with INVALID_ARGUMENT (as the real worker does
for over-long prompts after tokenizing). It records request ids it served and streams cancelled.
`FakePlacer` is a real grpc.aio Placer whose WatchPlacement streams what the test publishes.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from muxserve import config as mesh_config
from muxserve.serving import start_server
from muxserve.v1 import placer_pb2, placer_pb2_grpc, router_pb2, worker_pb2, worker_pb2_grpc
from services.router.server import serve


class EchoWorker(worker_pb2_grpc.WorkerServicer):
    def __init__(self, delay_s: float = 0.05, max_prompt_chars: int = 100, max_model_len: dict | None = None):
        self.delay_s = delay_s
        self.max_model_len = max_model_len or {}  # what GetStatus reports per model
        self.max_prompt_chars = max_prompt_chars
        self.served: list[str] = []
        self.cancelled: list[str] = []
        self.running = 0
        self.port = 0
        self._server = None

    async def Generate(self, request, context):
        if len(request.prompt) > self.max_prompt_chars:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"prompt is too long: {len(request.prompt)} chars (echo worker)")
        self.served.append(request.request_id)
        ids = list(request.prompt_token_ids) or [ord(c) % 256 for c in request.prompt]
        n = request.sampling.max_tokens
        self.running += 1
        try:
            for i in range(n):
                if request.model == "slow":
                    await asyncio.sleep(self.delay_s)
                yield router_pb2.GenerateResponse(request_id=request.request_id, token_ids=[ids[i % len(ids)]])
            yield router_pb2.GenerateResponse(request_id=request.request_id, finish_reason="length",
                                              usage=router_pb2.Usage(prompt_tokens=len(ids), completion_tokens=n))
        except asyncio.CancelledError:
            self.cancelled.append(request.request_id)
            raise
        finally:
            self.running -= 1

    async def GetStatus(self, request, context):
        return worker_pb2.WorkerStatus(worker_id="echo", models=[
            worker_pb2.HostedModel(name=n, max_model_len=v) for n, v in self.max_model_len.items()])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> "EchoWorker":
        def register(server):
            worker_pb2_grpc.add_WorkerServicer_to_server(self, server)
            return ["muxserve.v1.Worker"]

        self._server = await start_server(register, "127.0.0.1", 0)
        self.port = self._server.port
        return self

    async def stop(self) -> None:
        await self._server.stop(0)


class FakePlacer(placer_pb2_grpc.PlacerServicer):
    def __init__(self):
        self.current: placer_pb2.Placement | None = None
        self.changed = asyncio.Condition()
        self.port = 0

    async def publish(self, placement: placer_pb2.Placement) -> None:
        async with self.changed:
            self.current = placement
            self.changed.notify_all()

    async def WatchPlacement(self, request, context):
        sent = None
        while True:
            async with self.changed:
                await self.changed.wait_for(lambda: self.current is not None and self.current is not sent)
                sent = self.current
            yield sent

    async def start(self) -> "FakePlacer":
        def register(server):
            placer_pb2_grpc.add_PlacerServicer_to_server(self, server)
            return ["muxserve.v1.Placer"]

        self._server = await start_server(register, "127.0.0.1", 0)
        self.port = self._server.port
        return self

    async def stop(self) -> None:
        await self._server.stop(0)


def placement(version: int, units: dict[str, tuple[str, list[str]]]) -> placer_pb2.Placement:
    """units: {unit_id: (worker_address, [model, ...])}."""
    return placer_pb2.Placement(version=version, units=[
        placer_pb2.Unit(unit_id=u, worker_address=addr, llms=[placer_pb2.LLMPlacement(name=m) for m in models])
        for u, (addr, models) in units.items()])


def mesh(model_dir, redis_url: str, router: dict, names=("tiny", "slow", "idle"), worker: dict | None = None):
    """A mesh config serving `names`, all backed by the tiny checkpoint at `model_dir`.

    UNAVAILABLE is immediate unless the test sets `unavailable_wait_s` (default 30 s in service).
    """
    router = {"unavailable_wait_s": 0, **router}
    return mesh_config.from_dict({"redis_url": redis_url, "router": router, "worker": worker or {},
                                  "models": [{"name": n, "path": str(model_dir)} for n in names]})


@contextlib.asynccontextmanager
async def running_router(mesh_cfg):
    """Yield (router handle, Router stub) for a router on a free port."""
    router = await serve(mesh_cfg, port=0, http_port=0)
    try:
        async with grpc.aio.insecure_channel(router.address) as channel:
            from muxserve.v1 import router_pb2_grpc

            yield router, router_pb2_grpc.RouterStub(channel)
    finally:
        await router.stop(0)


def gen(model="tiny", ids=None, prompt=None, max_tokens=4, **sampling) -> router_pb2.GenerateRequest:
    req = router_pb2.GenerateRequest(model=model, sampling=router_pb2.SamplingParams(max_tokens=max_tokens, **sampling))
    if ids is not None:
        req.prompt_token_ids.SetInParent()
        req.prompt_token_ids.ids.extend(ids)
    if prompt is not None:
        req.prompt = prompt
    return req


async def collect(stub, request, **kw) -> list[router_pb2.GenerateResponse]:
    return [r async for r in stub.Generate(request, **kw)]
