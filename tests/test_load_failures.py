"""Own models in a real mesh (issue 13, points 1 and 2), the launcher's Mesh (real redis-server, placer, memmgr,
worker and router processes). One config lists a supported checkpoint with a measured cost table, an own
checkpoint with no cost table entry, an unsupported architecture (Bloom: transformers computes its attention
itself), a checkpoint whose safetensors are corrupt and one whose safetensors are missing.
- A model that cannot load fails alone: the mesh comes up within 60 s serving the two good models; the three
  others are reported by name and reason (the launcher, the worker's GetStatus, the placer's log) and their
  requests get FAILED_PRECONDITION with that reason on gRPC, 503 model_load_failed over HTTP, at once.
- The own checkpoint is planned from the analytic estimate (the placer logs it) and served."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import grpc
import httpx
import pytest
import yaml

from muxserve.launcher import Mesh
from muxserve.netutil import free_ports
from tests.meshconf import WORKER_PORTS
from muxserve.tiny import write_tiny_checkpoint
from muxserve.v1 import router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc

BROKEN = {  # model -> what its reason must say
    "bloom": "is not supported",
    "corrupt": "SafetensorError",
    "missing": "no *.safetensors",
    "mamba": "none of ('num_attention_heads'",  # no attention shapes: the placer itself cannot size it
}
AT_WORKER = ("bloom", "corrupt", "missing")  # placed, then refused by the worker that loads them


def _broken_checkpoints(root: Path, tiny_llama) -> dict[str, Path]:
    bloom = write_tiny_checkpoint(root / "bloom", "bloom", seed=3)
    mamba = write_tiny_checkpoint(root / "mamba", "mamba", seed=4)
    corrupt, missing = root / "corrupt", root / "missing"
    shutil.copytree(tiny_llama, corrupt)
    shutil.copytree(tiny_llama, missing)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(os.urandom(weights.stat().st_size))  # same size: only reading it finds out
    (missing / "model.safetensors").unlink()
    return {"bloom": bloom, "corrupt": corrupt, "missing": missing, "mamba": mamba}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, tiny_llama, tiny_qwen2, cpu_cost_table, cpu_probe_cache):
    root = tmp_path_factory.mktemp("failures")
    ports = free_ports(("redis", "router", "placer", "memmgr", "worker", "http"), spans={"worker": WORKER_PORTS})
    models = [{"name": "llama", "path": str(tiny_llama), "rate": 2.0, "cost_key": "tiny-llama"}]
    models += [{"name": n, "path": str(p), "rate": 1.0, "cost_key": "tiny-llama"}
               for n, p in _broken_checkpoints(root, tiny_llama).items()]
    models.append({"name": "own", "path": str(tiny_qwen2), "rate": 1.0})  # key "own": not in the cost table
    conf = {
        "redis_url": f"redis://127.0.0.1:{ports['redis']}/0",
        "models": models,
        "cluster": {"device": "cpu", "nodes": 1, "devices_per_node": 2},
        **{s: {"host": "127.0.0.1", "port": ports[s]} for s in ("router", "placer", "memmgr")},
        "worker": {"host": "127.0.0.1", "port": ports["worker"], "engine": {"block_size": 8}},
    }
    conf["placer"].update(cost_table=str(cpu_cost_table), probe_cache=str(cpu_probe_cache))
    conf["router"]["http_port"] = ports["http"]
    path = root / "mesh.yaml"
    path.write_text(yaml.safe_dump(conf))
    m = Mesh(str(path), log_dir=str(root / "logs"))
    t0 = time.monotonic()
    with m.running(timeout=60):
        m.start_s = time.monotonic() - t0
        yield m


def _generate(address: str, model: str, max_tokens: int = 4) -> list[router_pb2.GenerateResponse]:
    async def go():
        async with grpc.aio.insecure_channel(address) as ch:
            req = router_pb2.GenerateRequest(model=model, prompt="Hello",
                                             sampling=router_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True))
            return [c async for c in router_pb2_grpc.RouterStub(ch).Generate(req, timeout=60)]
    return asyncio.run(go())


def _worker_statuses(mesh: Mesh) -> list[worker_pb2.WorkerStatus]:
    """GetStatus of every worker the launcher started (one per unit)."""
    base = int(mesh.mesh.section("worker").port)
    n = sum(name.startswith("worker-") for name in mesh.procs)

    async def go():
        out = []
        for i in range(n):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{base + i}") as ch:
                stub = worker_pb2_grpc.WorkerStub(ch)
                out.append(await stub.GetStatus(worker_pb2.WorkerStatusRequest(), timeout=10))
        return out
    return asyncio.run(go())


def test_supported_model_serves_within_60s(mesh):
    assert mesh.start_s < 60
    chunks = _generate(mesh.router_address, "llama", 6)
    assert sum(len(c.token_ids) for c in chunks) == 6 and chunks[-1].finish_reason == "length"


def test_failures_reported_by_name_and_reason(mesh):
    assert sorted(mesh.failed) == sorted(BROKEN)  # what `muxserve up` prints
    statuses = _worker_statuses(mesh)
    assert sorted(m.name for s in statuses for m in s.models) == ["llama", "own"]
    failed = {name: why for s in statuses for name, why in s.failed_models.items()}
    assert sorted(failed) == sorted(AT_WORKER)
    for name, says in BROKEN.items():
        assert says in mesh.failed[name], (name, mesh.failed[name])
        if name in AT_WORKER:
            assert says in failed[name], (name, failed[name])
    assert "architecture 'BloomForCausalLM'" in failed["bloom"]
    placer_log = (Path(mesh.log_dir) / "placer.log").read_text()
    for name in AT_WORKER:  # the worker told the placer
        assert f"could not load model {name!r}" in placer_log and BROKEN[name] in placer_log
    assert "model 'mamba' is left out of the placement" in placer_log


@pytest.mark.parametrize("model", sorted(BROKEN))
def test_requests_for_a_broken_model_fail_with_the_reason(mesh, model):
    t0 = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _generate(mesh.router_address, model)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert model in err.value.details() and BROKEN[model] in err.value.details()
    assert time.monotonic() - t0 < 10  # answered, not retried for router.unavailable_wait_s
    r = httpx.post(mesh.http_url + "/completions", timeout=30,
                   json={"model": model, "prompt": "Hello", "max_tokens": 4})
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "model_load_failed" and BROKEN[model] in error["message"]
    chunks = _generate(mesh.router_address, "llama", 3)  # the others keep serving
    assert sum(len(c.token_ids) for c in chunks) == 3


def test_own_checkpoint_without_a_cost_table_is_planned_and_served(mesh):
    placer_log = (Path(mesh.log_dir) / "placer.log").read_text()
    assert "model 'own' (cost key 'own') is not in the cost table" in placer_log
    assert "ANALYTIC estimate" in placer_log and "probe of this machine" in placer_log
    chunks = _generate(mesh.router_address, "own", 5)
    assert sum(len(c.token_ids) for c in chunks) == 5 and chunks[-1].finish_reason == "length"
