"""The worker's config, built from the mesh config's validated `worker:` section (muxserve/settings.py has
every key, its type, default and range: `Worker`, `Leases`, `Engine`; validated there, once).

`engine` keeps only the keys the file (or the environment) set: a served unit's engine defaults `device`
to cluster.device and `job_mode` to process, and a placement's mode, compute shares and cores override
those keys (memmgr mode: the pool and its block_size are memmgr's; num_blocks is ignored).

Cached free blocks (memmgr mode) go back to memmgr when an LLM has held no block for idle_release_s,
when it is unloaded, and at shutdown (CloseSession); a worker that dies loses its blocks to memmgr
after memmgr's heartbeat_timeout_s.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from muxserve.config import section_of
from muxserve.settings import Leases, Worker

@dataclass(frozen=True)
class LeaseConfig:
    """How a worker leases from memmgr (settings.Leases documents the keys)."""

    chunk_token_blocks: int = 8
    low_token_blocks: int = 4
    high_token_blocks: int = 24
    idle_release_s: float = 2.0
    sync_interval_s: float = 1.0
    connect_timeout_s: float = 30.0

    @classmethod
    def from_dict(cls, raw) -> "LeaseConfig":
        """From a `worker.leases` section (or a dict of its keys, validated as that section)."""
        return cls(**section_of(Leases, raw, "worker.leases").model_dump())


METRICS_PORT_OFFSET = 1000  # a worker's /metrics port without metrics_port: its gRPC port + this


@dataclass
class WorkerConfig:
    host: str = "127.0.0.1"
    port: int = 50060
    worker_id: str = "worker-0"
    advertise: str = ""
    models: list[str] = field(default_factory=list)
    kv: str = "auto"
    leases: LeaseConfig = field(default_factory=LeaseConfig)
    engine: dict = field(default_factory=dict)  # the keys set in the file or environment
    drain_timeout_s: float = 120.0
    max_waiting: int = 256
    metrics_port: int | None = None  # None: port + METRICS_PORT_OFFSET (services/worker/metrics.py)

    @classmethod
    def from_section(cls, sec, worker_id: str | None = None) -> "WorkerConfig":
        """From `mesh.section("worker")` (or a dict of its keys, validated as that section)."""
        sec = section_of(Worker, sec, "worker")
        return cls(host=sec.host, port=sec.port,
                   worker_id=worker_id or sec.worker_id or f"worker-{socket.gethostname()}",
                   advertise=sec.advertise, models=list(sec.models), kv=sec.kv,
                   leases=LeaseConfig.from_dict(sec.leases),
                   engine=sec.engine.model_dump(exclude_unset=True, exclude_none=True),
                   drain_timeout_s=sec.drain_timeout_s, max_waiting=sec.max_waiting, metrics_port=sec.metrics_port)

    def engine_section(self, cluster_device: str) -> dict:
        """The `engine` keys with `device` defaulting to the cluster's (cpu or cuda) and `job_mode` to
        process: a served unit runs each job in its own process, on its own share (in-process use of
        the engine defaults to thread jobs)."""
        return {"device": cluster_device, "job_mode": "process", **self.engine}

    def advertised_address(self, bound_port: int) -> str:
        if self.advertise:
            return self.advertise
        host = socket.gethostname() if self.host in ("0.0.0.0", "::", "[::]") else self.host
        return f"{host}:{bound_port}"
