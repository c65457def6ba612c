"""The router in front of the real Worker service (services/worker/server.py, in-process engine on CPU):
greedy tokens equal transformers' generate, the worker's INVALID_ARGUMENT for an over-long text prompt
passes through unchanged, and a client cancel through the router frees the sequence's KV blocks."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from muxserve.v1 import worker_pb2, worker_pb2_grpc
from router_testlib import collect, gen, mesh, running_router
from services.router import convert
from services.worker import server as worker_server


@contextlib.asynccontextmanager
async def real_worker(tiny_model, redis_url):
    cfg = mesh(tiny_model, redis_url, {}, names=("tiny",),
               worker={"models": ["tiny"], "engine": {"block_size": 8, "num_blocks": 1024}})
    running, worker, _ = await worker_server.serve(cfg, port=0, host="127.0.0.1", worker_id="w0")
    try:
        yield f"127.0.0.1:{running.port}", worker
    finally:
        await running.stop(0)
        await worker.close()


def reference(path, prompt_ids: list[int], n: int) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, ids.shape[1]:].tolist()


async def test_greedy_through_router_equals_transformers(tiny_model, redis_url):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt = "The quick brown fox jumps over"
    ids = tok(prompt).input_ids
    expected = reference(tiny_model, ids, 10)
    async with real_worker(tiny_model, redis_url) as (address, _):
        cfg = mesh(tiny_model, redis_url, {"workers": {"tiny": [address]}}, names=("tiny",))
        async with running_router(cfg) as (_, stub):
            for request in (gen(prompt=prompt, max_tokens=10, ignore_eos=True),
                            gen(ids=ids, max_tokens=10, ignore_eos=True)):
                chunks = await collect(stub, request)
                assert [t for c in chunks for t in c.token_ids] == expected
                assert (chunks[-1].finish_reason, chunks[-1].usage.completion_tokens) == ("length", 10)
                assert "".join(c.text for c in chunks) == tok.decode(expected, skip_special_tokens=True)


async def test_over_long_text_prompt_status_passes_through(tiny_model, redis_url):
    request = gen(prompt="hello " * 300, max_tokens=4)  # > 256 tokens: only the worker can tell
    async with real_worker(tiny_model, redis_url) as (address, _):
        async with grpc.aio.insecure_channel(address) as ch:  # what the worker itself answers
            direct = worker_pb2_grpc.WorkerStub(ch).Generate(worker_pb2.WorkerGenerateRequest(
                request_id="direct", model="tiny", prompt=request.prompt,
                sampling=convert.sampling_to_proto(convert.sampling_from_proto(request.sampling))))
            with pytest.raises(grpc.aio.AioRpcError) as want:
                await collect_call(direct)
        cfg = mesh(tiny_model, redis_url, {"workers": {"tiny": [address]}}, names=("tiny",))
        async with running_router(cfg) as (_, stub):
            with pytest.raises(grpc.aio.AioRpcError) as got:
                await collect(stub, request)
            assert want.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (got.value.code(), got.value.details()) == (want.value.code(), want.value.details())
            after = await collect(stub, gen(prompt="still serving", max_tokens=2, ignore_eos=True))
            # the tokens, not the chunks: a slow reader gets both tokens merged into one chunk
            assert (sum(len(c.token_ids) for c in after), after[-1].finish_reason) == (2, "length")


async def collect_call(call):
    return [m async for m in call]


async def test_cancel_through_router_frees_kv_blocks(tiny_model, redis_url):
    async with real_worker(tiny_model, redis_url) as (address, worker):
        pool = worker.engine.stats()["pool"]
        assert pool["free"] == pool["capacity"]
        cfg = mesh(tiny_model, redis_url, {"workers": {"tiny": [address]}}, names=("tiny",))
        async with running_router(cfg) as (router, stub):
            call = stub.Generate(gen(ids=[5] * 40, max_tokens=200, ignore_eos=True))
            first = await call.read()
            assert first.token_ids
            busy = worker.engine.stats()
            assert busy["pool"]["free"] < busy["pool"]["capacity"]
            call.cancel()
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                s = worker.engine.stats()
                if s["llms"]["tiny"]["running"] == 0 and s["pool"]["free"] == s["pool"]["capacity"]:
                    break
                assert asyncio.get_running_loop().time() < deadline, f"blocks not freed after cancel: {s}"
                await asyncio.sleep(0.05)
            worker.engine.engine.check_integrity()
            assert not router.servicer.table.in_flight
