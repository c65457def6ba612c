"""Issue 13, point 4: the worker's own gRPC validates exactly as the router does (one shared validation),
undecodable messages get INVALID_ARGUMENT on every server, the public prompt size is bounded, and a big
prompt is tokenized off the worker's event loop (other streams keep flowing while it is).

A real worker service (process jobs, tiny llama) in this process, a real router in front of it."""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
import pytest

from muxserve.v1 import router_pb2, worker_pb2, worker_pb2_grpc
from router_testlib import collect, gen, mesh, running_router
from services.worker import server as worker_server

LIMIT = 200_000  # router.max_prompt_chars in this test


@contextlib.asynccontextmanager
async def stack(model_dir, redis_url):
    bounds = {"max_prompt_chars": LIMIT, "max_stop_strings": 4}
    cfg = mesh(model_dir, redis_url, bounds, names=("tiny",),
               worker={"models": ["tiny"], "metrics_port": -1, "engine": {"block_size": 8, "num_blocks": 512}})
    running, worker, _ = await worker_server.serve(cfg, port=0, host="127.0.0.1", worker_id="w0")
    try:
        rcfg = mesh(model_dir, redis_url, {**bounds, "workers": {"tiny": [f"127.0.0.1:{running.port}"]}},
                    names=("tiny",))
        async with running_router(rcfg) as (router, stub):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
                yield stub, worker_pb2_grpc.WorkerStub(ch), ch
    finally:
        await running.stop(0)
        await worker.close()


def wreq(prompt="hi", max_tokens=3, **sampling) -> worker_pb2.WorkerGenerateRequest:
    return worker_pb2.WorkerGenerateRequest(request_id=f"w{time.monotonic_ns()}", model="tiny", prompt=prompt,
                                            sampling=router_pb2.SamplingParams(max_tokens=max_tokens, **sampling))


async def status_of(call) -> tuple[grpc.StatusCode, str]:
    try:
        out = [c async for c in call]
        return grpc.StatusCode.OK, out[-1].finish_reason
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details()


BAD_SAMPLING = [dict(temperature=float("nan")), dict(top_p=float("inf")), dict(temperature=-1.0),
                dict(top_k=-2), dict(stop=["a", "b", "c", "d", "e"]), dict(stop=[""]), dict(stop=["x" * 300])]


async def test_request_guards(tiny_model, redis_url):
    """One stack for the three checks below (a worker and a router take seconds to start)."""
    async with stack(tiny_model, redis_url) as (router, worker, worker_channel):
        await worker_refuses_what_the_router_refuses(router, worker)
        await undecodable_messages_are_invalid_argument(router, worker_channel)
        await prompt_size_is_bounded_and_tokenized_off_the_loop(router, worker)


async def worker_refuses_what_the_router_refuses(router, worker):
    for bad in BAD_SAMPLING:
        r_code, r_msg = await status_of(router.Generate(gen(prompt="hi", max_tokens=3, **bad)))
        w_code, w_msg = await status_of(worker.Generate(wreq(**bad)))
        assert r_code == w_code == grpc.StatusCode.INVALID_ARGUMENT, (bad, r_msg, w_msg)
        assert r_msg == w_msg and "sampling." in w_msg, (r_msg, w_msg)
    long_id = wreq()
    long_id.request_id = "x" * 129
    code, msg = await status_of(worker.Generate(long_id))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_request_id_chars" in msg
    assert await status_of(worker.Generate(wreq(ignore_eos=True))) == (grpc.StatusCode.OK, "length")


async def undecodable_messages_are_invalid_argument(router, worker_channel):
    raw = worker_channel.unary_stream("/muxserve.v1.Worker/Generate")
    code, msg = await status_of(raw(b"\x0a\xff\xff\xff\x0f"))  # field 1, length past the end
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "decoded" in msg
    status = worker_channel.unary_unary("/muxserve.v1.Worker/GetStatus")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await status(b"\xff\xff\xff")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    ok = await collect(router, gen(prompt="still fine", max_tokens=2, ignore_eos=True))
    assert ok[-1].finish_reason == "length"


async def prompt_size_is_bounded_and_tokenized_off_the_loop(router, worker):
    huge = "word " * (LIMIT // 5 + 1)  # just past the limit
    for call in (router.Generate(gen(prompt=huge, max_tokens=2)), worker.Generate(wreq(prompt=huge))):
        code, msg = await status_of(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_prompt_chars" in msg
    # under the limit but far past the context: tokenized off the loop, then refused by its length;
    # the worker's event loop (this test's: the worker runs in-process) keeps ticking meanwhile
    big = "lorem ipsum dolor " * (LIMIT // 18 - 1)
    lags, done = [], asyncio.Event()

    async def ticker():
        while not done.is_set():
            t = time.monotonic()
            await asyncio.sleep(0.005)
            lags.append(time.monotonic() - t - 0.005)
    tick = asyncio.ensure_future(ticker())
    t0 = time.monotonic()
    code, msg = await status_of(worker.Generate(wreq(prompt=big)))
    took = time.monotonic() - t0
    done.set()
    await tick
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_model_len" in msg, msg
    print(f"big prompt answered in {took:.2f}s; event loop lag at most {max(lags):.3f}s")
    assert max(lags) < max(0.25, took / 2), f"the worker's loop stalled {max(lags):.2f}s of {took:.2f}s"
    ok = await status_of(worker.Generate(wreq(prompt="after", ignore_eos=True)))
    assert ok == (grpc.StatusCode.OK, "length")
