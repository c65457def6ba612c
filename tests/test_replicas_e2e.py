"""Replicas at run time: one LLM offered more than one unit serves, `placer.max_replicas: 2` on a 2-core
node gives it two 1-core units; the launcher starts a worker per unit, both register the LLM with the one
memmgr, the router spreads requests over both, and every request gets the same greedy tokens."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import grpc
import yaml

from muxserve.launcher import Mesh
from muxserve.netutil import free_ports
from services.worker.config import METRICS_PORT_OFFSET
from tests.meshconf import WORKER_PORTS
from muxserve.v1 import router_pb2, router_pb2_grpc


def _busy_seconds(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    found = re.findall(r'^muxserve:job_busy_seconds_total\{[^}]*job="decode"[^}]*\} (\S+)$', text, re.M)
    return sum(float(x) for x in found)


async def _burst(address: str, n: int) -> list[list[router_pb2.GenerateResponse]]:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = router_pb2_grpc.RouterStub(ch)

        async def one(i: int):
            req = router_pb2.GenerateRequest(model="m", prompt=f"replica {i % 2}",
                                             sampling=router_pb2.SamplingParams(max_tokens=24, ignore_eos=True))
            return [c async for c in stub.Generate(req)]
        return await asyncio.gather(*(one(i) for i in range(n)))


def test_a_hot_llm_served_by_two_units(tmp_path, tiny_llama, cpu_cost_table):
    ports = free_ports(("redis", "router", "placer", "memmgr", "worker"), spans={"worker": WORKER_PORTS})
    conf = {"redis_url": f"redis://127.0.0.1:{ports['redis']}/0",
            "models": [{"name": "m", "path": str(tiny_llama), "rate": 100000.0, "cost_key": "tiny-llama"}],
            "cluster": {"device": "cpu", "nodes": 1, "devices_per_node": 2},
            **{s: {"host": "127.0.0.1", "port": ports[s]} for s in ("router", "memmgr")},
            "placer": {"host": "127.0.0.1", "port": ports["placer"], "cost_table": str(cpu_cost_table),
                       "max_replicas": 2},
            "worker": {"host": "127.0.0.1", "port": ports["worker"], "engine": {"block_size": 8, "num_blocks": 512}}}
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump(conf))
    mesh = Mesh(str(tmp_path / "mesh.yaml"), log_dir=str(tmp_path / "logs"), http_port=-1)
    with mesh.running(timeout=240):
        assert sorted(n for n in mesh.procs if n.startswith("worker")) == ["worker-0", "worker-1"]
        results = asyncio.run(_burst(mesh.router_address, 16))
        by_prompt: dict[int, set] = {0: set(), 1: set()}
        for i, chunks in enumerate(results):
            assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 24
            by_prompt[i % 2].add(tuple(t for c in chunks for t in c.token_ids))
        assert all(len(outs) == 1 for outs in by_prompt.values())  # same greedy tokens on either replica
        busy = [_busy_seconds(ports["worker"] + i + METRICS_PORT_OFFSET) for i in range(2)]
        assert all(b > 0 for b in busy), busy
