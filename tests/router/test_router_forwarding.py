"""Router forwarding against real grpc.aio Worker servers (the minimal echo worker of router_testlib):
streaming, least-loaded choice, failover and UNAVAILABLE, client cancellation reaching the worker,
popularity recorded in a real Redis, and a Redis outage that fails no request."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis.asyncio as aioredis

from conftest import free_port
from muxserve.popularity import PopularityStore
from muxserve.v1 import router_pb2
from router_testlib import EchoWorker, collect, gen, mesh, running_router


async def eventually(predicate, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_streams_chunks_and_assigns_request_id(tiny_model, redis_url):
    worker = await EchoWorker().start()
    async with running_router(mesh(tiny_model, redis_url, {"workers": {"tiny": [worker.address]}})) as (_, stub):
        chunks = await collect(stub, gen(ids=[7, 8, 9], max_tokens=5))
        assert [t for c in chunks for t in c.token_ids] == [7, 8, 9, 7, 8]
        last = chunks[-1]
        assert (last.finish_reason, last.usage.prompt_tokens, last.usage.completion_tokens) == ("length", 3, 5)
        rid = chunks[0].request_id
        assert len(rid) == 32 and all(c.request_id == rid for c in chunks) and worker.served == [rid]

        named = gen(ids=[1], max_tokens=1)
        named.request_id = "mine-1"
        assert {c.request_id for c in await collect(stub, named)} == {"mine-1"}
    await worker.stop()


async def test_least_loaded_worker_and_in_flight_accounting(tiny_model, redis_url):
    a, b = await EchoWorker(delay_s=0.2).start(), await EchoWorker(delay_s=0.2).start()
    cfg = mesh(tiny_model, redis_url, {"workers": {"slow": [a.address, b.address]}})
    async with running_router(cfg) as (router, stub):
        calls = [stub.Generate(gen("slow", ids=[1], max_tokens=5)) for _ in range(4)]
        firsts = [await c.read() for c in calls]  # all four in flight now
        assert all(f.token_ids == [1] for f in firsts)
        assert (len(a.served), len(b.served)) == (2, 2)
        assert dict(router.servicer.table.in_flight) == {a.address: 2, b.address: 2}
        for c in calls:
            assert (await collect_rest(c))[-1].finish_reason == "length"
        assert await eventually(lambda: not router.servicer.table.in_flight)
    await a.stop()
    await b.stop()


async def collect_rest(call):
    out = []
    while (msg := await call.read()) is not grpc.aio.EOF:
        out.append(msg)
    return out


async def test_dead_worker_is_unavailable_and_failover_before_first_chunk(tiny_model, redis_url):
    dead = f"127.0.0.1:{free_port()}"
    live = await EchoWorker().start()
    cfg = mesh(tiny_model, redis_url, {"workers": {"tiny": [dead], "slow": [dead, live.address]}})
    async with running_router(cfg) as (router, stub):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(stub, gen("tiny", ids=[1]))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert f"worker {dead} hosting model 'tiny' is unavailable" in err.value.details()
        for _ in range(3):  # whichever is tried first, the live worker answers
            assert [t for c in await collect(stub, gen("slow", ids=[4], max_tokens=2)) for t in c.token_ids] == [4, 4]
        assert len(live.served) == 3
        models = await stub.ListModels(router_pb2.ListModelsRequest())
        assert len(models.models) == 3  # still serving
    await live.stop()


async def test_client_cancel_cancels_the_worker_stream(tiny_model, redis_url):
    worker = await EchoWorker(delay_s=0.1).start()
    cfg = mesh(tiny_model, redis_url, {"workers": {"slow": [worker.address]}})
    async with running_router(cfg) as (router, stub):
        call = stub.Generate(gen("slow", ids=[3], max_tokens=200))
        assert (await call.read()).token_ids == [3]
        call.cancel()
        assert await eventually(lambda: len(worker.cancelled) == 1), "worker never saw the cancel"
        assert worker.cancelled == worker.served and worker.running == 0
        assert await eventually(lambda: not router.servicer.table.in_flight)
        assert len(await collect(stub, gen("slow", ids=[3], max_tokens=2))) == 3
    await worker.stop()


async def test_popularity_recorded_per_model(tiny_model, redis_url):
    worker = await EchoWorker().start()
    cfg = mesh(tiny_model, redis_url, {"workers": {"tiny": [worker.address], "slow": [worker.address]}})
    async with running_router(cfg) as (router, stub):
        for _ in range(3):
            await collect(stub, gen("tiny", ids=[1, 2, 3, 4], max_tokens=2))
        await collect(stub, gen("slow", prompt="abcde", max_tokens=1))
        with pytest.raises(grpc.aio.AioRpcError):
            await collect(stub, gen("tiny", ids=[1], max_tokens=0))  # rejected: not an arrival
    # The router has stopped: its recorder flushed on close.
    r = aioredis.from_url(redis_url)
    store = PopularityStore(r)
    tiny, slow = await store.stats("tiny", 60), await store.stats("slow", 60)
    assert (tiny["requests"], tiny["prompt_tokens"], tiny["output_tokens"]) == (3, 12, 6)
    # A text prompt's tokens are only known from the worker's usage at the end (echo: 1 per char).
    assert (slow["requests"], slow["prompt_tokens"], slow["output_tokens"]) == (1, 5, 1)
    assert (await store.rates(["tiny", "slow", "idle"], 60)) == {"tiny": 3 / 60, "slow": 1 / 60, "idle": 0.0}
    await r.aclose()
    await worker.stop()


async def test_redis_down_fails_no_request(tiny_model, own_redis):
    worker = await EchoWorker().start()
    cfg = mesh(tiny_model, own_redis.url, {"workers": {"tiny": [worker.address]}})
    async with running_router(cfg) as (router, stub):
        assert len(await collect(stub, gen(ids=[1], max_tokens=1))) == 2
        assert await eventually(lambda: router.recorder.written == 2)  # arrival + output tokens
        own_redis.stop()
        for _ in range(5):
            assert len(await collect(stub, gen(ids=[1], max_tokens=1))) == 2
        assert await eventually(lambda: router.recorder.dropped == 10)
        assert not router.recorder.healthy and router.recorder.written == 2
    await worker.stop()


async def test_context_length_lowered_to_what_workers_report(tiny_model, redis_url):
    worker = await EchoWorker(max_model_len={"tiny": 64}).start()
    cfg = mesh(tiny_model, redis_url, {"workers": {"tiny": [worker.address]}, "status_interval_s": 0.1})
    async with running_router(cfg) as (router, stub):
        async def tiny_len():
            models = await stub.ListModels(router_pb2.ListModelsRequest())
            return {m.name: m.max_model_len for m in models.models}["tiny"]

        deadline = asyncio.get_running_loop().time() + 10
        while await tiny_len() != 64:  # 256 from config.json until the first GetStatus round
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(stub, gen(ids=[1] * 70, max_tokens=1))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "prompt is too long: 70 tokens, the context of model 'tiny' is 64 tokens" in err.value.details()
        assert len(await collect(stub, gen(ids=[1] * 60, max_tokens=4))) == 5
    await worker.stop()
