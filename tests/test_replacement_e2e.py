"""Re-placement end to end (issue 4, done-when 3), through the launcher's own code.

Three LLMs on one node of two CPU cores. The cost table is written by hand (one-core units only; a
decode step of 10 ms at batch 1, +25% per extra sequence, twice as slow at a 50% share), so the plans are
the same on any machine and can be checked by hand: with prior rates a=20, b=c=0.1 one core saturates
on `a` (about 7 req/s at 32 output tokens), so `a` gets a unit of its own and `b`, `c` share the other.
Synthetic arrivals (b: 20 req/s, c: 4 req/s) are then written into Redis (the same PopularityStore the router records into) while paced real requests for all
three (about 1 req/s per model, so the observed rates do not depend on this machine's speed) keep
flowing through the router. The placer sees the drift and recomputes within the two running units: b
alone serves ~7 req/s, a + c share the other (~1 + ~5 req/s); the current layout would serve ~8 req/s
in all, the new one ~13. It publishes the new version; workers load what they gained and drain then
unload what they lost. Every request sent across the switch must finish with exactly the greedy
tokens it had before.
"""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest
import redis.asyncio as aioredis
import yaml

from muxserve.launcher import Mesh
from muxserve.netutil import free_ports
from tests.meshconf import WORKER_PORTS
from muxserve.popularity import Arrival, PopularityStore
from muxserve.v1 import placer_pb2, placer_pb2_grpc, router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc

PROMPT = [5, 17, 42, 7, 99, 3]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, tiny_llama, tiny_qwen2):
    root = tmp_path_factory.mktemp("replace")
    cost = root / "hand-cost.json"
    cost.write_text(json.dumps(_hand_cost_table()))
    ports = free_ports(("redis", "router", "placer", "memmgr", "worker"), spans={"worker": WORKER_PORTS})
    conf = {
        "redis_url": f"redis://127.0.0.1:{ports['redis']}/0",
        "models": [{"name": "a", "path": str(tiny_llama), "rate": 20.0, "cost_key": "tiny"},
                   {"name": "b", "path": str(tiny_qwen2), "rate": 0.1, "cost_key": "tiny"},
                   {"name": "c", "path": str(tiny_llama), "rate": 0.1, "cost_key": "tiny"}],
        "cluster": {"device": "cpu", "nodes": 1, "devices_per_node": 2},
        "router": {"host": "127.0.0.1", "port": ports["router"], "unavailable_wait_s": 60},
        "memmgr": {"host": "127.0.0.1", "port": ports["memmgr"]},
        "placer": {"host": "127.0.0.1", "port": ports["placer"], "cost_table": str(cost), "avg_prompt_len": 16, "avg_output_len": 32,
                   "interval_s": 0.5, "window_s": 4, "observed_weight": 1.0, "drift_threshold": 0.3,
                   "sustain_s": 1.0, "load_time_s": 0.1, "min_gain": 0.05},
        "worker": {"host": "127.0.0.1", "port": ports["worker"], "engine": {"block_size": 8, "num_blocks": 1024}},
    }
    path = root / "mesh.yaml"
    path.write_text(yaml.safe_dump(conf))
    m = Mesh(str(path), log_dir=str(root / "logs"), http_port=0)  # HTTP on a free port (unused here)
    with m.running(timeout=240):
        yield m


def _hand_cost_table() -> dict:
    """key -> devices -> share % -> batch -> context -> {prefill, decoding} ms (the profiler's format)."""
    grid = {}
    for share in (50, 100):
        grid[str(share)] = {str(b): {str(q): {"prefill": 0.1 * b * q * 100 / share,
                                              "decoding": 10 * 100 / share * (1 + 0.25 * (b - 1))}
                                     for q in (16, 64)} for b in (1, 4)}
    return {"tiny": {"1": grid}}


async def _placement(mesh) -> placer_pb2.Placement:
    async with grpc.aio.insecure_channel(mesh.mesh.address("placer")) as ch:
        return await placer_pb2_grpc.PlacerStub(ch).GetPlacement(placer_pb2.GetPlacementRequest(), timeout=10)


def _layout(p: placer_pb2.Placement) -> dict[str, set[str]]:
    """{worker address: set of LLM names} of a placement."""
    return {u.worker_address: {x.name for x in u.llms} for u in p.units}


async def _hosted(address: str) -> dict[str, bool]:
    """{model: draining} that the worker at `address` reports."""
    async with grpc.aio.insecure_channel(address) as ch:
        st = await worker_pb2_grpc.WorkerStub(ch).GetStatus(worker_pb2.WorkerStatusRequest(), timeout=10)
    return {m.name: m.draining for m in st.models}


async def _generate(stub, model: str) -> tuple[list[int], str]:
    req = router_pb2.GenerateRequest(model=model, prompt_token_ids=router_pb2.TokenIds(ids=PROMPT),
                                     sampling=router_pb2.SamplingParams(max_tokens=6, ignore_eos=True))
    chunks = [c async for c in stub.Generate(req, timeout=120)]
    return [t for c in chunks for t in c.token_ids], chunks[-1].finish_reason


async def _traffic(stub, stop: asyncio.Event, results: list, period_s: float = 1.0) -> None:
    """Requests for a, b and c in rounds of at least `period_s` (at most 1 req/s per model however fast this
    machine serves, so the observed rates stay what the docstring computes) until `stop`;
    (model, tokens, finish, error, time) per request."""
    while not stop.is_set():
        started = time.monotonic()
        for model in ("a", "b", "c"):
            try:
                results.append((model, *await _generate(stub, model), None, time.monotonic()))
            except grpc.aio.AioRpcError as exc:
                results.append((model, None, None, f"{exc.code().name}: {exc.details()}", time.monotonic()))
        await asyncio.sleep(max(0.0, started + period_s - time.monotonic()))


async def _shift_popularity(redis_url: str, stop: asyncio.Event) -> None:
    """Synthetic arrivals: 20 req/s of `b` and 4 of `c`, written every 0.25 s into the router's Redis layout."""
    r = aioredis.from_url(redis_url)
    store = PopularityStore(r, bucket_s=1.0, ttl_s=600)
    while not stop.is_set():
        now = time.time()
        await store.record_batch([Arrival("b", 5, 5 * len(PROMPT), 0, now), Arrival("c", 1, len(PROMPT), 0, now)])
        await asyncio.sleep(0.25)
    await r.aclose()


async def _until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await pred()
        if value:
            return value
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_popularity_shift_replaces_and_workers_reconcile_without_losing_requests(mesh):
    asyncio.run(_scenario(mesh))


async def _scenario(mesh):
    first = await _placement(mesh)
    assert sorted(map(sorted, _layout(first).values())) == [["a"], ["b", "c"]], _layout(first)

    async with grpc.aio.insecure_channel(mesh.router_address) as ch:
        stub = router_pb2_grpc.RouterStub(ch)
        expected = {m: await _generate(stub, m) for m in ("a", "b", "c")}  # before any shift
        assert all(f == "length" and len(t) == 6 for t, f in expected.values())

        stop, results = asyncio.Event(), []
        tasks = [asyncio.ensure_future(_traffic(stub, stop, results))]
        tasks.append(asyncio.ensure_future(_shift_popularity(mesh.mesh.redis_url, stop)))
        try:
            async def shifted():
                p = await _placement(mesh)
                return p if sorted(map(sorted, _layout(p).values())) == [["a", "c"], ["b"]] else None

            second = await _until(shifted, 90, "a placement version giving b a unit of its own")
            assert second.version > first.version
            assert set(_layout(second)) == set(_layout(first))  # the same two workers, new LLM sets

            async def reconciled():
                for address, llms in _layout(second).items():
                    if await _hosted(address) != {m: False for m in llms}:
                        return False
                return True

            await _until(reconciled, 90, "workers loading what they gained, unloading what they lost")
            switched = time.monotonic()
            for model in ("a", "b", "c"):
                await _until(lambda: _served_after(results, model, switched), 60, f"a request for {model}")
        finally:
            stop.set()
            await asyncio.gather(*tasks)

    errors = [r for r in results if r[3] is not None]
    assert not errors, errors[:5]
    assert len(results) >= 6
    for model, tokens, finish, _, _ in results:
        assert (tokens, finish) == expected[model], model


async def _served_after(results: list, model: str, t: float) -> bool:
    return any(r[0] == model and r[4] > t for r in results)
