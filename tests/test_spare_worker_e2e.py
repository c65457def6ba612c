"""Issue 13, point 4: a worker that dies loses only its own streams and the placer reassigns its unit.

On the launcher's Mesh (real redis-server, placer, memmgr, workers, router; a real SIGKILL): the spatial
policy puts each of two LLMs on its own unit, and `worker.spares: 1` starts a third worker that holds no
unit. The worker of one LLM is SIGKILLed under load and NOT restarted: once it has been silent for
placer.worker_ttl_s, the placer hands its unit to the spare, the spare loads the LLM, and the router
sends that LLM's requests there, within 30 s of the kill. No request of the other LLM is lost meanwhile."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from muxserve.launcher import Mesh
from tests.meshconf import mesh_of, two_llm_conf
from muxserve.v1 import placer_pb2, placer_pb2_grpc, router_pb2_grpc, worker_pb2, worker_pb2_grpc
from tests.test_faults_e2e import _all_blocks_free, _complete, _failed_with_status, _kill, _stream, _worker_of

TTL_S = 3.0


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, tiny_llama, tiny_qwen2, cpu_cost_table):
    root = tmp_path_factory.mktemp("spare")
    conf = two_llm_conf(tiny_llama, tiny_qwen2, cpu_cost_table)
    conf["placer"].update(policy="spatial", worker_ttl_s=TTL_S, interval_s=0.5)
    conf["memmgr"].update(heartbeat_timeout_s=TTL_S, block_size=8,
                          pools=[{"head_dim": 16, "dtype": "float32", "num_blocks": 4096}])
    conf["worker"].update(metrics_port=-1, spares=1, leases={"idle_release_s": 0.5, "sync_interval_s": 0.2})
    m = mesh_of(conf, root)
    with m.running(timeout=240):
        yield m


async def _status(address: str) -> worker_pb2.WorkerStatusResponse:
    async with grpc.aio.insecure_channel(address) as ch:
        return await worker_pb2_grpc.WorkerStub(ch).GetStatus(worker_pb2.WorkerStatusRequest(), timeout=5)


async def _holder(mesh: Mesh, model: str) -> str:
    """The worker address the placer's current placement names for `model`'s unit."""
    async with grpc.aio.insecure_channel(mesh.mesh.address("placer")) as ch:
        p = await placer_pb2_grpc.PlacerStub(ch).GetPlacement(placer_pb2.GetPlacementRequest(), timeout=5)
    return next(u.worker_address for u in p.units if any(m.name == model for m in u.llms))


def test_a_dead_workers_unit_goes_to_the_spare(mesh):
    base = int(mesh.mesh.section("worker").port)
    spare = f"127.0.0.1:{base + 2}"

    async def go():
        assert sorted(n for n in mesh.procs if n.startswith("worker")) == ["worker-0", "worker-1", "worker-2"]
        victim = await _worker_of(mesh, "llama")
        assert victim != 2 and not (await _status(spare)).models  # the spare hosts nothing
        async with grpc.aio.insecure_channel(mesh.router_address) as ch:
            stub = router_pb2_grpc.RouterStub(ch)
            started: list[int] = []
            qwen = [asyncio.ensure_future(_stream(stub, "qwen", i, started, tokens=96)) for i in range(6)]
            llama = [asyncio.ensure_future(_stream(stub, "llama", i, started)) for i in range(6)]
            while len(started) < 12 and not all(f.done() for f in qwen + llama):
                await asyncio.sleep(0.01)
            _kill(mesh, f"worker-{victim}")
            killed = time.monotonic()
            qwen += [asyncio.ensure_future(_stream(stub, "qwen", 100 + i, tokens=24)) for i in range(10)]
            while not _complete(r := await _stream(stub, "llama", 0, tokens=8)):  # until the spare serves it
                assert time.monotonic() - killed < 30, f"llama not served again within 30 s of the kill: {r}"
                await asyncio.sleep(0.5)
            served_after = time.monotonic() - killed
            qwen += [asyncio.ensure_future(_stream(stub, "qwen", 200 + i, tokens=24)) for i in range(4)]
            qwen_results, llama_results = await asyncio.gather(*qwen), await asyncio.gather(*llama)
        assert all(_complete(r) for r in qwen_results), qwen_results  # the other LLM lost nothing
        assert all(_complete(r) or _failed_with_status(r) for r in llama_results), llama_results
        assert await _holder(mesh, "llama") == spare
        assert [m.name for m in (await _status(spare)).models] == ["llama"]
        assert served_after >= TTL_S * 2 / 3  # the placer waited for the TTL, nothing restarted the victim
        assert mesh.procs[f"worker-{victim}"].poll() is not None
        print(f"spare took over: llama served again {served_after:.1f}s after its worker's SIGKILL")
        await _all_blocks_free(mesh)  # the dead worker's session expired; nothing leaked
    asyncio.run(go())

