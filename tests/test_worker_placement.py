"""The placement reaches the run time: the worker turns its unit (mode, devices, job shares) into the
engine's mode, admission shares and job cores, read back from the job processes; a new placement
version changes shares between dispatches without failing a request."""

from __future__ import annotations

import asyncio
import os

import pytest

from muxserve import config as cfg
from muxserve.tiny import write_tiny_checkpoint
from muxserve.v1 import placer_pb2
from services.worker.config import WorkerConfig
from services.worker.engine.types import SamplingParams
from services.worker.follower import UnitAssignment, my_unit
from services.worker.server import Worker

CORES = sorted(os.sched_getaffinity(0))


def placement(version: int, mode: str, shares: dict[str, tuple[float, float]], devices=(0, 1)):
    llms = [placer_pb2.LLMPlacement(name=n, prefill_share=p, decode_share=d, rate=1.0) for n, (p, d) in shares.items()]
    return placer_pb2.Placement(version=version, units=[
        placer_pb2.Unit(unit_id="u0x2", devices=list(devices), llms=llms, worker_address="w:1", mode=mode)])


def test_my_unit_keeps_mode_devices_and_shares():
    a = my_unit(placement(3, "temporal", {"a": (0.7, 0.3), "b": (1.0, 0.0)}), "u0x2", "")
    assert (a.version, a.unit_id, a.mode, a.devices) == (3, "u0x2", "temporal", [0, 1])
    assert a.shares == pytest.approx({"a/prefill": 0.7, "a/decode": 0.3, "b/prefill": 1.0})


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    root = tmp_path_factory.mktemp("wp")
    models = [{"name": n, "path": str(write_tiny_checkpoint(root / n, "llama", seed=i))} for i, n in enumerate("ab")]
    return cfg.from_dict({"models": models, "cluster": {"device": "cpu", "nodes": 1, "devices_per_node": 2},
                          "worker": {"kv": "local", "engine": {"block_size": 4, "num_blocks": 2000}}})


@pytest.mark.skipif(len(CORES) < 2, reason="needs 2 cores")
def test_worker_runs_the_units_mode_and_shares(mesh):
    async def main():
        worker = Worker(mesh, WorkerConfig.from_section(mesh.section("worker"), "w0"))
        first = my_unit(placement(1, "spatial-temporal", {"a": (0.5, 0.5), "b": (0.5, 0.5)}), "u0x2", "")
        await worker.apply(first)
        eng = worker.engine.engine
        assert eng.config.job_mode == "process" and eng.config.cores == CORES[:2]
        assert eng.budget.shares == {"a/prefill": 0.5, "a/decode": 0.5, "b/prefill": 0.5, "b/decode": 0.5}
        pids = {f"{n}/{k}": getattr(h, k) for n, h in eng.llms.items() for k in ("prefill", "decode")}
        for job in pids.values():
            assert job.wait_ready(60)
        got = {j: sorted(os.sched_getaffinity(job.pid)) for j, job in pids.items()}
        assert got == {"a/prefill": [CORES[0]], "a/decode": [CORES[1]], "b/prefill": [CORES[0]],
                       "b/decode": [CORES[1]]}
        # version 2: temporal, a's decode on the whole unit; requests in flight keep going
        streams = [worker.generate(f"r{n}", n, None, [5, 6, 7], SamplingParams(max_tokens=30, ignore_eos=True))
                   for n in "ab"]

        async def drain(it):
            return [ch async for ch in it]
        tasks = [asyncio.ensure_future(drain(s)) for s in streams]
        await asyncio.sleep(0.05)
        await worker.apply(my_unit(placement(2, "temporal", {"a": (0.5, 1.0), "b": (0.5, 0.5)}), "u0x2", ""))
        results = await asyncio.gather(*tasks)
        assert [r[-1].finish_reason for r in results] == ["length", "length"]
        assert eng.scheduler.mode == "temporal" and eng.budget.shares["a/decode"] == 1.0
        after = await drain(worker.generate("r2", "a", None, [5, 6], SamplingParams(max_tokens=3, ignore_eos=True)))
        assert after[-1].finish_reason == "length"
        assert sorted(os.sched_getaffinity(pids["a/decode"].pid)) == CORES[:2], "re-pinned at its next dispatch"
        await worker.close()

    asyncio.run(main())


def test_spatial_unit_on_one_core(mesh):
    async def main():
        worker = Worker(mesh, WorkerConfig.from_section(mesh.section("worker"), "w1"))
        await worker.apply(UnitAssignment(1, "u1x1", {"b": 1.0}, "spatial-temporal", [1], {}))
        job = worker.engine.engine.llms["b"].decode
        assert job.wait_ready(60)
        assert os.sched_getaffinity(job.pid) == {CORES[1 % len(CORES)]}
        await worker.close()

    asyncio.run(main())
