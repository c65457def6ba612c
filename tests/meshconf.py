"""The two-LLM CPU mesh the end-to-end tests start: tiny Llama (rate 2) and tiny Qwen2 (rate 1) on one node of
2 devices, every service on 127.0.0.1 on a free port, the placer on the cost table measured for them."""

from __future__ import annotations

from pathlib import Path

import yaml

from muxserve.launcher import Mesh
from muxserve.netutil import free_ports
from services.worker.config import METRICS_PORT_OFFSET

WORKER_PORTS = (4, (0, METRICS_PORT_OFFSET))  # free_ports span of a test mesh's workers: port + i, metrics


def two_llm_conf(llama, qwen, cost_table) -> dict:
    """The mesh's config as a dict (callers add keys per section before `mesh_of`)."""
    ports = free_ports(("redis", "router", "placer", "memmgr", "worker"), spans={"worker": WORKER_PORTS})
    conf = {
        "redis_url": f"redis://127.0.0.1:{ports['redis']}/0",
        "models": [{"name": "llama", "path": str(llama), "rate": 2.0, "cost_key": "tiny-llama"},
                   {"name": "qwen", "path": str(qwen), "rate": 1.0, "cost_key": "tiny-qwen2"}],
        "cluster": {"device": "cpu", "nodes": 1, "devices_per_node": 2},
        **{s: {"host": "127.0.0.1", "port": ports[s]} for s in ("router", "placer", "memmgr", "worker")},
    }
    conf["placer"]["cost_table"] = str(cost_table)  # costs of these models on this machine
    return conf


def mesh_of(conf: dict, root: Path, http_port: int = -1) -> Mesh:
    """A launcher Mesh over `conf`, written to root/mesh.yaml, logging to root/logs."""
    path = root / "mesh.yaml"
    path.write_text(yaml.safe_dump(conf))
    return Mesh(str(path), log_dir=str(root / "logs"), http_port=http_port)
