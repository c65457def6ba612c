"""Router validation: each bad input gets its status code and a message naming what is wrong, and the
router keeps serving afterwards. Real router (grpc.aio, port 0), real redis-server, a tiny checkpoint
(max_position_embeddings 256) for the context length, the echo worker for the good requests."""

from __future__ import annotations

import json

import grpc
import pytest

from muxserve.v1 import router_pb2
from router_testlib import EchoWorker, collect, gen, mesh, running_router

INVALID, NOT_FOUND, UNAVAILABLE = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                   grpc.StatusCode.UNAVAILABLE)


def bad_requests(vocab: int):
    no_prompt = router_pb2.GenerateRequest(model="tiny", sampling=router_pb2.SamplingParams(max_tokens=4))
    no_sampling = router_pb2.GenerateRequest(model="tiny", prompt="hello")
    return [
        ("unknown model", gen("nope", ids=[1]), NOT_FOUND, "model 'nope' is not served here"),
        ("empty model", gen("", ids=[1]), INVALID, "model is required"),
        ("no prompt", no_prompt, INVALID, "prompt is empty"),
        ("empty text", gen(prompt=""), INVALID, "prompt is empty"),
        ("empty ids", gen(ids=[]), INVALID, "prompt is empty"),
        ("max_tokens 0", gen(ids=[1], max_tokens=0), INVALID, "max_tokens must be >= 1, got 0"),
        ("no sampling", no_sampling, INVALID, "max_tokens must be >= 1, got 0"),
        ("max_tokens past ctx", gen(prompt="hi", max_tokens=257), INVALID,
         "max_tokens (257) exceeds the context of model 'tiny' (256 tokens)"),
        ("temperature < 0", gen(ids=[1], temperature=-0.5), INVALID, "temperature must be >= 0, got -0.5"),
        ("temperature nan", gen(ids=[1], temperature=float("nan")), INVALID, "temperature must be a finite"),
        ("top_p > 1", gen(ids=[1], top_p=1.5), INVALID, "top_p must be in (0, 1], got 1.5"),
        ("top_p < 0", gen(ids=[1], top_p=-0.25), INVALID, "top_p must be in (0, 1], got -0.25"),
        ("top_k < 0", gen(ids=[1], top_k=-3), INVALID, "top_k must be >= 0, got -3"),
        ("prompt = ctx", gen(ids=[1] * 256, max_tokens=1), INVALID, "prompt is too long: 256 tokens"),
        ("prompt > ctx", gen(ids=[1] * 300, max_tokens=1), INVALID, "prompt is too long: 300 tokens"),
        ("prompt + output > ctx", gen(ids=[1] * 200, max_tokens=100), INVALID,
         "prompt (200 tokens) + sampling.max_tokens (100) exceeds the context"),
        ("token outside vocab", gen(ids=[1, vocab]), INVALID, f"token {vocab} is outside the vocabulary"),
        ("empty stop string", gen(ids=[1], stop=["ok", ""]), INVALID, "sampling.stop must not contain empty"),
        ("not hosted", gen("idle", ids=[1]), UNAVAILABLE, "model 'idle' is not hosted on any worker yet"),
    ]


async def test_bad_inputs_get_status_codes_and_router_keeps_serving(tiny_model, redis_url):
    vocab = json.loads((tiny_model / "config.json").read_text())["vocab_size"]
    worker = await EchoWorker().start()
    cfg = mesh(tiny_model, redis_url, {"workers": {"tiny": [worker.address]}})
    async with running_router(cfg) as (router, stub):
        for name, request, code, message in bad_requests(vocab):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await collect(stub, request)
            assert err.value.code() == code, f"{name}: {err.value.code()} {err.value.details()}"
            assert message in err.value.details(), f"{name}: {err.value.details()!r}"
        assert worker.served == []  # nothing invalid reached the worker

        models = await stub.ListModels(router_pb2.ListModelsRequest())
        assert [(m.name, m.max_model_len, list(m.units)) for m in models.models] == [
            ("tiny", 256, [worker.address]), ("slow", 256, []), ("idle", 256, [])]
        chunks = await collect(stub, gen(ids=[5, 6], max_tokens=3))
        assert [list(c.token_ids) for c in chunks] == [[5], [6], [5], []]
    await worker.stop()


async def test_text_prompt_too_long_passes_worker_status_through(tiny_model, redis_url):
    worker = await EchoWorker(max_prompt_chars=10).start()
    async with running_router(mesh(tiny_model, redis_url, {"workers": {"tiny": [worker.address]}})) as (_, stub):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(stub, gen(prompt="x" * 11))
        assert err.value.code() == INVALID
        assert err.value.details() == "prompt is too long: 11 chars (echo worker)"  # unchanged
        assert len(await collect(stub, gen(prompt="short"))) == 5
    await worker.stop()
