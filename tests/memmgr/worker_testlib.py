"""Helpers for the worker-over-memmgr tests: a real memmgr, real workers (in-process or an OS process
started by `python -m muxserve.cli worker`), their gRPC Generate, and transformers' greedy reference.

memmgr runs as its own OS process (`python -m muxserve.cli memmgr`), as deployed: a worker's
scheduler thread leases with blocking RPCs while holding the engine lock, and the worker's event
loop takes that lock too, so a memmgr served by the worker's own event loop could stall both."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import torch
import yaml

from memmgr_testlib import config as memmgr_section
from muxserve import config as mesh_config
from muxserve.netutil import free_port
from muxserve.serving import wait_serving
from muxserve.v1 import memmgr_pb2, memmgr_pb2_grpc, router_pb2, worker_pb2, worker_pb2_grpc
from services.memmgr import convert
from services.memmgr.types import Stats
from services.worker import server as worker_server

REPO = Path(__file__).resolve().parents[2]
POOL = [{"head_dim": 16, "dtype": "float32", "num_blocks": 2048}]
LEASES = {"idle_release_s": 0.3, "sync_interval_s": 0.1}
_HF: dict = {}


class MemmgrProcess:
    """A memmgr OS process on a free port; `stats()` / `check()` ask it over gRPC (sync)."""

    def __init__(self, section: dict, port: int | None = None, token: str | None = None):
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="memmgr-test-"))
        conf = self.dir / "memmgr.yaml"
        conf.write_text(yaml.safe_dump({"models": [{"name": "unused", "path": str(self.dir)}],
                                        "memmgr": {**section, "host": "127.0.0.1", "port": self.port},
                                        "internal_token": token}))
        self.proc = subprocess.Popen([sys.executable, "-m", "muxserve.cli", "memmgr", "--config", str(conf)],
                                     cwd=REPO, stdout=open(self.dir / "memmgr.log", "wb"), stderr=subprocess.STDOUT)
        self._channel = grpc.insecure_channel(self.address)
        self._stub = memmgr_pb2_grpc.MemmgrStub(self._channel)

    def stats(self) -> Stats:
        return convert.stats_from_proto(self._stub.Stats(memmgr_pb2.StatsRequest(), timeout=10))

    def check(self) -> None:
        resp = self._stub.CheckIntegrity(memmgr_pb2.CheckIntegrityRequest(), timeout=10)
        assert resp.ok, resp.problem

    async def stop(self) -> None:
        self._channel.close()
        self.proc.terminate()
        await asyncio.to_thread(self.proc.wait, 10)


async def memmgr(port: int | None = None, token: str | None = None, **overrides) -> MemmgrProcess:
    """A memmgr with one head_dim-16 float32 pool (block_size 4) unless overridden, on `port` (default:
    a free one), requiring the internal `token` when given; SERVING at return."""
    cfg = memmgr_section(**{"pools": POOL, **overrides})  # validated here, then written for the process
    svc = MemmgrProcess({"pools": POOL, "block_size": cfg.block_size, "heartbeat_timeout_s": cfg.heartbeat_timeout_s,
                         "quota": {"adapt_interval_s": 0}, "integrity_interval_s": 0, **overrides}, port, token)
    try:
        await wait_serving(svc.address, 60)
    except Exception:
        await svc.stop()
        raise
    return svc


def mesh_dict(svc: MemmgrProcess, models: dict[str, Path], hosted: list[str], **worker) -> dict:
    """A mesh config whose worker hosts `hosted` (static) and leases from `svc`."""
    return {"models": [{"name": n, "path": str(p)} for n, p in models.items()],
            "memmgr": {"host": "127.0.0.1", "port": svc.port},
            "worker": {"models": hosted, "kv": "memmgr", "leases": LEASES, **worker}}


async def start_worker(conf: dict, worker_id: str):
    """An in-process worker service (real gRPC server); returns (address, Worker, RunningServer)."""
    running, worker, _ = await worker_server.serve(mesh_config.from_dict(conf), port=0, host="127.0.0.1",
                                                   worker_id=worker_id)
    return f"127.0.0.1:{running.port}", worker, running


def spawn_worker(conf: dict, port: int, worker_id: str, tmp: Path) -> subprocess.Popen:
    """A worker as its own OS process (`python -m muxserve.cli worker`), logging to tmp/<id>.log."""
    path = tmp / f"{worker_id}.yaml"
    path.write_text(yaml.safe_dump(conf))
    log = open(tmp / f"{worker_id}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "muxserve.cli", "worker", "--config", str(path),
                             "--port", str(port), "--worker-id", worker_id],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def request(rid: str, model: str, ids: list[int], max_tokens: int) -> worker_pb2.WorkerGenerateRequest:
    return worker_pb2.WorkerGenerateRequest(
        request_id=rid, model=model, prompt_token_ids=ids,
        sampling=router_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True))


async def generate(address: str, req) -> tuple[list[int], str]:
    """All token ids of one Generate stream and its finish reason."""
    async with grpc.aio.insecure_channel(address) as ch:
        toks, reason = [], ""
        async for c in worker_pb2_grpc.WorkerStub(ch).Generate(req):
            toks += c.token_ids
            reason = c.finish_reason or reason
        return toks, reason


async def wait_until(pred, timeout: float, what: str, interval: float = 0.05):
    """Await `pred()` (sync or async) until truthy; returns its value or fails naming `what`."""
    end = time.monotonic() + timeout
    while True:
        val = pred()
        val = await val if asyncio.iscoroutine(val) else val
        if val:
            return val
        assert time.monotonic() < end, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(interval)


def hf_greedy(path, prompt_ids: list[int], n: int) -> list[int]:
    """transformers' generate(do_sample=False), exactly n new tokens (no EOS stop)."""
    from transformers import AutoModelForCausalLM

    key = str(path)
    if key not in _HF:
        _HF[key] = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model = _HF[key]
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=model.config.eos_token_id)
    return out[0, len(prompt_ids):].tolist()


def prompts(n: int, seed: int, lo: int = 3, hi: int = 30, vocab: int = 300) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [torch.randint(3, vocab, (k,), generator=g).tolist() for k in lens]


def llm_usage(stats, name: str):
    return next((u for u in stats.llms if u.name == name), None)
