"""The router's drain, in process: health turns NOT_SERVING on both fronts (gRPC health, HTTP /health) while a
running stream keeps going and new requests are still served through the pre-stop delay; the stream then
finishes with OK inside the grace."""

from __future__ import annotations

import asyncio

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router_testlib import EchoWorker, collect, gen, mesh, serve


async def test_drain_reports_not_serving_on_both_fronts_and_finishes_the_stream(tiny_model, redis_url):
    worker = await EchoWorker(delay_s=0.05).start()
    router = await serve(mesh(tiny_model, redis_url, {"workers": {"slow": [worker.address], "tiny": [worker.address]}}),
                         port=0, http_port=0)
    async with grpc.aio.insecure_channel(router.address) as ch, httpx.AsyncClient() as http:
        from muxserve.v1 import router_pb2_grpc

        stub, health = router_pb2_grpc.RouterStub(ch), health_pb2_grpc.HealthStub(ch)
        health_url = router.http_url.removesuffix("/v1") + "/health"
        assert (await http.get(health_url)).status_code == 200
        stream = stub.Generate(gen("slow", ids=[1], max_tokens=30))  # ~1.5 s of tokens
        assert (await stream.read()).token_ids == [1]
        draining = asyncio.ensure_future(router.running.drain(pre_stop=0.5, grace=30))
        await asyncio.sleep(0.1)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == \
            health_pb2.HealthCheckResponse.NOT_SERVING
        assert (await http.get(health_url)).status_code == 503
        assert (await collect(stub, gen("tiny", ids=[1], max_tokens=2)))[-1].finish_reason == "length"  # pre-stop
        chunks = []
        while (c := await stream.read()) is not grpc.aio.EOF:
            chunks.append(c)
        assert await stream.code() == grpc.StatusCode.OK and chunks[-1].finish_reason == "length"
        assert sum(len(c.token_ids) for c in chunks) == 29
        await draining
    await router.close_background()
    await worker.stop()
