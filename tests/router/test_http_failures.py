"""Failures out of band through both fronts, on the real Worker service (process jobs on CPU) behind a
real router: a job process killed mid-stream ends the gRPC stream with UNAVAILABLE and a message (never
OK with finish_reason "error") and the HTTP stream with an OpenAI error event before [DONE]; a model
whose tokenizer has no chat template answers chat with 400; the worker keeps serving after both."""

from __future__ import annotations

import asyncio
import contextlib
import json

import grpc
import httpx
import openai
import pytest

from muxserve.tiny import write_tiny_checkpoint
from router_testlib import collect, gen, mesh, running_router
from services.worker import server as worker_server


@pytest.fixture(scope="module")
def no_template(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("no-template"), "llama", seed=3, chat_template=None)


@contextlib.asynccontextmanager
async def stack(model_dir, redis_url):
    """A real worker hosting `model_dir` as "tiny" and a router in front (HTTP on a free port)."""
    cfg = mesh(model_dir, redis_url, {}, names=("tiny",), worker={"models": ["tiny"], "metrics_port": -1,
                                                                  "engine": {"block_size": 8, "num_blocks": 1024}})
    running, worker, _ = await worker_server.serve(cfg, port=0, host="127.0.0.1", worker_id="w0")
    try:
        rcfg = mesh(model_dir, redis_url, {"workers": {"tiny": [f"127.0.0.1:{running.port}"]}}, names=("tiny",))
        async with running_router(rcfg) as (router, stub):
            yield router, stub, worker
    finally:
        await running.stop(0)
        await worker.close()


def kill_decode_job(worker) -> None:
    worker.engine.engine.llms["tiny"].decode._proc.kill()


async def test_job_crash_mid_stream_ends_with_a_status_on_both_fronts(no_template, redis_url):
    async with stack(no_template, redis_url) as (router, stub, worker):
        call = stub.Generate(gen(prompt="The quick brown fox", max_tokens=900, ignore_eos=True))
        seen = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for chunk in call:
                seen.append(chunk)
                if len(seen) == 1:
                    kill_decode_job(worker)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "job" in err.value.details()
        assert seen and all(c.finish_reason in ("", "stop", "length", "abort") for c in seen)

        body = {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 900, "ignore_eos": True,
                "stream": True}
        events = []
        async with httpx.AsyncClient(timeout=60) as http:
            async with http.stream("POST", router.http_url + "/completions", json=body) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
                        if len(events) == 1:
                            kill_decode_job(worker)
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["type"] == "service_unavailable" and "job" in error["message"]
        assert all(json.loads(e)["choices"][0]["finish_reason"] in (None, "stop", "length") for e in events[:-2])

        ok = await collect(stub, gen(prompt="still serving", max_tokens=3, ignore_eos=True))
        assert ok[-1].finish_reason == "length"


async def test_chat_without_a_chat_template_is_400(no_template, redis_url):
    async with stack(no_template, redis_url) as (router, _, _):
        async with openai.AsyncOpenAI(base_url=router.http_url, api_key="none", max_retries=0) as client:
            with pytest.raises(openai.BadRequestError) as err:
                await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                     max_tokens=4)
            assert "chat template" in err.value.response.json()["error"]["message"]
            out = await client.completions.create(model="tiny", prompt="hi", max_tokens=3,
                                                  extra_body={"ignore_eos": True})
            assert out.usage.completion_tokens == 3


async def test_oversized_chunked_http_body_is_413(no_template, redis_url):
    async with stack(no_template, redis_url) as (router, _, _):
        async def body():
            for _ in range(8):
                yield b"x" * (1 << 20)  # 8 MiB in chunks, no Content-Length: counted as it streams in
        async with httpx.AsyncClient(timeout=60) as http:
            r = await http.post(router.http_url + "/completions", content=body(),
                                headers={"Content-Type": "application/json"})
            assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
            ok = await http.post(router.http_url + "/completions",
                                 json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
            assert ok.status_code == 200, ok.text
