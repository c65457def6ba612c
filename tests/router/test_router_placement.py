"""Routing from the placement: a real grpc.aio Placer streaming placements, the Redis fallback, and the
versioned routing table; plus the router's health, reflection and `python -m services.router` boot."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import free_port
from muxserve.serving import wait_serving
from muxserve.v1 import router_pb2
from router_testlib import EchoWorker, FakePlacer, collect, gen, mesh, placement, running_router
from services.router.routing import Host, PlacementView, RoutingTable

ROOT = Path(__file__).resolve().parents[2]


async def units_of(stub) -> dict[str, list[str]]:
    resp = await stub.ListModels(router_pb2.ListModelsRequest())
    return {m.name: list(m.units) for m in resp.models}


async def wait_for_units(stub, expected, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while (got := await units_of(stub)) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"units stayed {got}, wanted {expected}"
        await asyncio.sleep(0.05)


def test_routing_table_versions_and_order():
    table = RoutingTable()
    v2 = PlacementView(2, {"m": (Host("u0", "a:1"), Host("u1", "b:1"))})
    assert table.update(v2) and table.version == 2
    assert not table.update(PlacementView(1, {}))  # older, from Redis: ignored
    assert table.units("m") == ["u0", "u1"]
    with table.acquire("a:1"):
        assert table.candidates("m") == ["b:1", "a:1"]
    assert table.candidates("m") == ["b:1", "a:1"]  # tie on load: the one forwarded to less goes first
    assert table.update(PlacementView(1, {}), force=True) and table.candidates("m") == []


async def test_follows_placer_stream(tiny_model, redis_url):
    placer = await FakePlacer().start()
    w1, w2 = await EchoWorker().start(), await EchoWorker().start()
    cfg = mesh(tiny_model, redis_url, {"placer_address": f"127.0.0.1:{placer.port}"})
    async with running_router(cfg) as (router, stub):
        with pytest.raises(grpc.aio.AioRpcError) as err:  # no placement yet
            await collect(stub, gen("tiny", ids=[1]))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "not hosted" in err.value.details()

        await placer.publish(placement(1, {"u0": (w1.address, ["tiny", "slow"]), "u1": ("", ["idle"])}))
        await wait_for_units(stub, {"tiny": ["u0"], "slow": ["u0"], "idle": []})
        await collect(stub, gen("tiny", ids=[1], max_tokens=1))
        assert len(w1.served) == 1

        await placer.publish(placement(2, {"u0": (w1.address, ["slow"]), "u1": (w2.address, ["tiny", "idle"])}))
        await wait_for_units(stub, {"tiny": ["u1"], "slow": ["u0"], "idle": ["u1"]})
        await collect(stub, gen("tiny", ids=[1], max_tokens=1))
        assert (len(w1.served), len(w2.served)) == (1, 1) and router.servicer.table.version == 2
    for s in (placer, w1, w2):
        await s.stop()


async def test_request_waits_for_a_host_during_replacement(tiny_model, redis_url):
    """With unavailable_wait_s > 0, a request for a model no worker hosts yet (or whose host is
    down) is retried against the placement as it changes, and succeeds once a host appears."""
    placer = await FakePlacer().start()
    worker = await EchoWorker().start()
    gone = f"127.0.0.1:{free_port()}"  # the old host, already stopped
    cfg = mesh(tiny_model, redis_url, {"placer_address": f"127.0.0.1:{placer.port}", "unavailable_wait_s": 20})
    async with running_router(cfg) as (router, stub):
        await placer.publish(placement(1, {"u0": (gone, ["tiny"])}))
        await wait_for_units(stub, {"tiny": ["u0"], "slow": [], "idle": []})
        pending = asyncio.ensure_future(collect(stub, gen("tiny", ids=[7], max_tokens=3)))
        await asyncio.sleep(1.0)
        assert not pending.done()  # waiting, not failed
        await placer.publish(placement(2, {"u1": (worker.address, ["tiny"])}))
        chunks = await asyncio.wait_for(pending, 15)
        assert [t for c in chunks for t in c.token_ids] == [7, 7, 7] and chunks[-1].finish_reason == "length"
        assert len(worker.served) == 1
    for s in (placer, worker):
        await s.stop()


async def test_placement_from_redis_when_placer_is_down(tiny_model, redis_url):
    worker = await EchoWorker().start()
    """The placer's own PlacementStore writes Redis; the router reads it while the placer is down."""
    from services.placer import placement as pl
    from services.placer.store import PlacementStore

    r = aioredis.from_url(redis_url)
    store = PlacementStore(r)
    for version in (1, 2, 3):  # the store numbers versions itself
        unit = pl.Unit("u3", [3], [pl.LLMPlacement("tiny", 1.0, 0.5)], worker_address=worker.address)
        assert await store.publish(pl.Placement("muxserve", 1.0, [unit])) == version
    cfg = mesh(tiny_model, redis_url, {"placer_address": f"127.0.0.1:{free_port()}"})
    async with running_router(cfg) as (router, stub):
        await wait_for_units(stub, {"tiny": ["u3"], "slow": [], "idle": []})
        assert router.servicer.table.version == 3
        assert len(await collect(stub, gen("tiny", ids=[2], max_tokens=2))) == 3
    await r.aclose()
    await worker.stop()


async def test_health_and_reflection(tiny_model, redis_url):
    async with running_router(mesh(tiny_model, redis_url, {"workers": {}})) as (router, _):
        async with grpc.aio.insecure_channel(router.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            for service in ("", "muxserve.v1.Router"):
                resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert resp.status == health_pb2.HealthCheckResponse.SERVING
            refl = reflection_pb2_grpc.ServerReflectionStub(ch)
            req = reflection_pb2.ServerReflectionRequest(list_services="")
            async for resp in refl.ServerReflectionInfo(iter([req])):
                names = {s.name for s in resp.list_services_response.service}
            assert {"muxserve.v1.Router", "grpc.health.v1.Health"} <= names


def test_cli_boots_serves_and_stops_on_sigterm(tiny_model, redis_server, tmp_path):
    port = free_port()
    cfg = tmp_path / "mesh.yaml"
    cfg.write_text(yaml.safe_dump({"redis_url": redis_server.url, "router": {"port": 1, "workers": {}},
                                   "models": [{"name": "tiny", "path": str(tiny_model)}]}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "muxserve.cli", "router", "--config", str(cfg), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        asyncio.run(wait_serving(f"127.0.0.1:{port}", timeout=60))
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "draining" in out
