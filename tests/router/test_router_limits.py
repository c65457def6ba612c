"""The router's own bounds against real gRPC servers: past router.max_concurrent_streams a request is
refused with RESOURCE_EXHAUSTED (gRPC) / 429 (HTTP) while the others stream on, and a message past
router.max_message_bytes is refused with RESOURCE_EXHAUSTED; the router keeps serving after both."""

from __future__ import annotations

import grpc
import httpx
import pytest

from router_testlib import EchoWorker, collect, gen, mesh, running_router


async def test_concurrent_stream_bound_and_message_size(tiny_model, redis_url):
    worker = await EchoWorker(delay_s=0.1).start()
    cfg = mesh(tiny_model, redis_url, {"workers": {"slow": [worker.address], "tiny": [worker.address]},
                                       "max_concurrent_streams": 2, "max_message_bytes": 1 << 16})
    async with running_router(cfg) as (router, stub):
        calls = [stub.Generate(gen("slow", ids=[1], max_tokens=10)) for _ in range(2)]
        for c in calls:
            assert (await c.read()).token_ids == [1]  # both in flight
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(stub, gen("tiny", ids=[1], max_tokens=1))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_concurrent_streams" in err.value.details()
        async with httpx.AsyncClient() as http:
            r = await http.post(router.http_url + "/completions", json={"model": "tiny", "prompt": [1], "max_tokens": 1})
            assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
            for c in calls:
                assert (await rest(c)).finish_reason == "length"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await collect(stub, gen("tiny", prompt="x" * (1 << 17), max_tokens=1))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            r = await http.post(router.http_url + "/completions",
                                json={"model": "tiny", "prompt": "x" * (1 << 17), "max_tokens": 1})
            assert r.status_code == 413
            ok = await http.post(router.http_url + "/completions", json={"model": "tiny", "prompt": [3], "max_tokens": 2})
            assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2
        assert (await collect(stub, gen("tiny", ids=[5], max_tokens=2)))[-1].finish_reason == "length"
    await worker.stop()


async def rest(call):
    """The last message of a call already read from with read()."""
    last = None
    while (msg := await call.read()) is not grpc.aio.EOF:
        last = msg
    return last
