"""The placer as a service: real redis-server, real grpc.aio server on port 0, real tiny checkpoints.

Drives popularity through Redis (arrivals shift from model a to model b) and checks a new
placement version is published, stored, and streamed to a WatchPlacement client.
"""

import asyncio
import time

import grpc
import pytest
import redis.asyncio as aioredis
import yaml

from muxserve import config as mconfig
from muxserve.popularity import PopularityStore
from muxserve.serving import wait_serving
from muxserve.tiny import write_tiny_checkpoint
from muxserve.v1 import placer_pb2, placer_pb2_grpc
from services.placer.server import serve
from services.placer.store import PlacementStore
from services.worker.follower import PlacementFollower


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {n: write_tiny_checkpoint(root / n, seed=i) for i, n in enumerate(("a", "b"))}


def write_config(tmp_path, redis_url, checkpoints, cost_path):
    raw = {
        "redis_url": redis_url,
        "models": [{"name": "a", "path": str(checkpoints["a"]), "rate": 4.0, "cost_key": "tiny"},
                   {"name": "b", "path": str(checkpoints["b"]), "rate": 0.1, "cost_key": "tiny"}],
        "cluster": {"device": "cpu", "nodes": 1, "devices_per_node": 2},
        "placer": {"cost_table": str(cost_path), "device_memory_gb": 0.002, "memory_utilization": 1.0,
                   "avg_prompt_len": 10, "avg_output_len": 100, "window_s": 5, "observed_weight": 0.7,
                   "interval_s": 0.2, "sustain_s": 0.4, "drift_threshold": 0.3, "min_gain": 0.0,
                   "load_time_s": 0.0},
    }
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(raw))
    return mconfig.load(path)


def rates_of(p) -> dict:
    return {m.name: m.rate for u in p.units for m in u.llms}


def test_publish_register_watch_and_replace(tmp_path, redis_url, checkpoints, hand_table_file):
    mesh = write_config(tmp_path, redis_url, checkpoints, hand_table_file)
    asyncio.run(asyncio.wait_for(scenario(mesh, redis_url), 60))


async def scenario(mesh, redis_url):
    placer = await serve(mesh, port=0)
    addr = f"127.0.0.1:{placer.port}"
    try:
        await wait_serving(addr, timeout=10)
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = placer_pb2_grpc.PlacerStub(ch)
            first = await stub.GetPlacement(placer_pb2.GetPlacementRequest())
            assert first.version >= 1 and first.policy == "muxserve"
            assert sorted(rates_of(first)) == ["a", "b"]

            watch = stub.WatchPlacement(placer_pb2.GetPlacementRequest())
            seen = await asyncio.wait_for(watch.read(), 5)
            assert seen.version == first.version

            reg = await stub.RegisterWorker(placer_pb2.RegisterWorkerRequest(
                worker_id="w0", address="127.0.0.1:6000", num_devices=2))
            assert reg.unit_id and reg.version > first.version
            with_worker = await asyncio.wait_for(watch.read(), 5)
            assert any(u.worker_address == "127.0.0.1:6000" and u.unit_id == reg.unit_id
                       for u in with_worker.units)

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.RegisterWorker(placer_pb2.RegisterWorkerRequest(worker_id="w1", address="x"))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "address" in err.value.details()

            # popularity shifts from a to b: 40 arrivals of b in the 5 s window, plus an unknown name
            r = aioredis.from_url(redis_url)
            pop = PopularityStore(r)
            for _ in range(40):
                await pop.record("b", 10, now=time.time())
            await pop.record("not-configured", 10)
            newer = with_worker
            while not rates_of(newer)["b"] > rates_of(newer)["a"]:
                newer = await asyncio.wait_for(watch.read(), 10)
            assert newer.version > with_worker.version
            assert rates_of(newer)["b"] == pytest.approx(0.7 * 8 + 0.3 * 0.1, rel=0.2)
            stored = await PlacementStore(r).get()
            assert stored.version >= newer.version
            assert stored.unit(reg.unit_id).worker_address == "127.0.0.1:6000"
            got = await stub.GetPlacement(placer_pb2.GetPlacementRequest())
            assert got.version >= newer.version
            watch.cancel()
            await r.aclose()
    finally:
        await placer.stop()


def test_a_silent_workers_unit_goes_to_the_spare(tmp_path, redis_url, checkpoints, hand_table_file):
    """Real placer, real PlacementFollowers (the worker's, with stub applies): one follower more than units is
    told it is a spare; with a TTL far below the followers' own 5 s period nobody expires while alive (they
    re-register at the placer's heartbeat_s); a holder that goes silent loses its unit to the spare."""
    mesh = write_config(tmp_path, redis_url, checkpoints, hand_table_file)
    mesh.settings.placer.worker_ttl_s = 0.9
    asyncio.run(asyncio.wait_for(spare_scenario(mesh), 60))


async def spare_scenario(mesh):
    placer = await serve(mesh, port=0)
    addr = f"127.0.0.1:{placer.port}"
    applied: dict[str, list] = {}
    spares: list[str] = []
    tasks: dict[str, asyncio.Task] = {}

    def follow(name: str) -> None:
        async def apply(a):
            applied.setdefault(name, []).append(a.unit_id)

        f = PlacementFollower(addr, name, f"127.0.0.1:{7000 + len(tasks)}", 2, apply,
                              spare=lambda: spares.append(name))
        tasks[name] = asyncio.ensure_future(f.run())

    async def until(pred, what: str, within: float = 10.0):
        end = time.monotonic() + within
        while not pred():
            assert time.monotonic() < end, what
            await asyncio.sleep(0.05)
    try:
        await wait_serving(addr, timeout=10)
        n_units = len(placer.service.current.units)
        for i in range(n_units):
            follow(f"w{i}")
            await until(lambda: f"w{i}" in applied, f"w{i} got no unit")
        follow("spare")
        await until(lambda: spares == ["spare"], "the extra worker was not told it is a spare")
        await asyncio.sleep(3 * 0.9)  # three TTLs: the live followers re-register every 0.3 s
        assert placer.service.workers.workers.keys() == {*(f"w{i}" for i in range(n_units)), "spare"}
        assert "spare" not in applied and all(len(v) == 1 for v in applied.values()), applied
        unit = applied["w0"][0]
        tasks.pop("w0").cancel()  # w0 goes silent (a SIGKILL, as the placer sees it)
        await until(lambda: applied.get("spare") == [unit], "the spare did not get the silent worker's unit")
        assert "w0" not in placer.service.workers.workers
    finally:
        for t in tasks.values():
            t.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        await placer.stop()
