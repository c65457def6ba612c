"""The worker's config: its section of the deployment YAML (`worker:`), validated when built.

Keys (all optional):
    host, port          listen address (`muxserve up` starts one worker per unit; worker i on port + i)
    advertise           host:port the router reaches this worker at (default host:port, or the hostname
                        when host is 0.0.0.0)
    models              static list of model names to host without asking the placer (tests, demos)
    kv                  where KV blocks come from: `memmgr` (lease them from the unit's memmgr, whose
                        shared pool the worker maps without a copy), `local` (a pool of the worker's own,
                        sized by engine.num_blocks / pool_bytes), or `auto` (the default: memmgr when the
                        config has a `memmgr:` section or MUXSERVE_MEMMGR_ADDRESS is set, else local)
    leases              memmgr mode only (sizes in token blocks; x layers x KV heads head-wise blocks):
                          chunk_token_blocks 8    blocks leased per RPC
                          low_token_blocks 4      refill the LLM's local free list below this...
                          high_token_blocks 24    ...and return the surplus above this
                          idle_release_s 2.0      an LLM idle this long returns its local free list
                          sync_interval_s 1.0     how often quotas are read from memmgr (ADBS) and the
                                                  waiting counts reported
                          connect_timeout_s 30    how long to wait for memmgr at the first load
    engine              EngineConfig keys (services/worker/engine/config.py): block_size, num_blocks, dtype,
                        device (default: cluster.device), job_mode (default: process), start_mps, ...;
                        a placement's mode, compute shares and devices override mode /
                        compute_shares / cores (memmgr mode: the pool and its
                        block_size are memmgr's; num_blocks is ignored)
    drain_timeout_s     how long an unloaded LLM may finish its in-flight requests (default 120)
    max_waiting         per LLM: a request that finds this many of its model's requests waiting (not yet
                        scheduled) is refused with RESOURCE_EXHAUSTED instead of queueing (default 256)
    metrics_port        Prometheus /metrics of this worker (default: its gRPC port + 1000, so worker i of
                        `muxserve up` is on worker.port + i + 1000; 0 picks a free port, -1 turns it off);
                        served on the worker's host

Cached free blocks (memmgr mode) go back to memmgr when an LLM has held no block for idle_release_s,
when it is unloaded, and at shutdown (CloseSession); a worker that dies loses its blocks to memmgr
after memmgr's heartbeat_timeout_s.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, fields

KV_MODES = ("auto", "memmgr", "local")


@dataclass(frozen=True)
class LeaseConfig:
    """How a worker leases from memmgr (see `leases` above); validated when built."""

    chunk_token_blocks: int = 8
    low_token_blocks: int = 4
    high_token_blocks: int = 24
    idle_release_s: float = 2.0
    sync_interval_s: float = 1.0
    connect_timeout_s: float = 30.0

    @classmethod
    def from_dict(cls, raw: dict | None) -> "LeaseConfig":
        known = {f.name: f.type for f in fields(cls)}
        bad = sorted(set(raw or {}) - set(known))
        if bad:
            raise ValueError(f"worker.leases: unknown keys {bad}; known: {sorted(known)}")
        cfg = cls(**{k: (int if known[k] == "int" else float)(v) for k, v in (raw or {}).items()})
        if cfg.chunk_token_blocks < 1 or not 0 <= cfg.low_token_blocks < cfg.high_token_blocks:
            raise ValueError("worker.leases: need chunk_token_blocks >= 1 and 0 <= low_token_blocks < "
                             f"high_token_blocks, got {cfg}")
        if min(cfg.idle_release_s, cfg.connect_timeout_s) < 0 or cfg.sync_interval_s <= 0:
            raise ValueError(f"worker.leases: times must be >= 0 (sync_interval_s > 0), got {cfg}")
        return cfg


@dataclass
class WorkerConfig:
    host: str = "127.0.0.1"
    port: int = 50060
    worker_id: str = "worker-0"
    advertise: str = ""
    models: list[str] = field(default_factory=list)
    kv: str = "auto"
    leases: LeaseConfig = field(default_factory=LeaseConfig)
    engine: dict = field(default_factory=dict)
    drain_timeout_s: float = 120.0
    max_waiting: int = 256
    metrics_port: int | None = None  # None: port + 1000 (services/worker/metrics.py)

    @classmethod
    def from_section(cls, sec: dict, worker_id: str | None = None) -> "WorkerConfig":
        models = sec.get("models") or []
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise ValueError("worker.models must be a list of model names")
        cfg = cls(host=str(sec.get("host", "127.0.0.1")), port=int(sec.get("port", 50060)),
                  worker_id=worker_id or str(sec.get("worker_id", f"worker-{socket.gethostname()}")),
                  advertise=str(sec.get("advertise", "")), models=list(models),
                  kv=str(sec.get("kv", "auto")), leases=LeaseConfig.from_dict(sec.get("leases")),
                  engine=dict(sec.get("engine") or {}),
                  drain_timeout_s=float(sec.get("drain_timeout_s", 120.0)),
                  max_waiting=int(sec.get("max_waiting", 256)),
                  metrics_port=None if sec.get("metrics_port") is None else int(sec["metrics_port"]))
        if cfg.max_waiting < 1:
            raise ValueError(f"worker.max_waiting must be >= 1, got {cfg.max_waiting}")
        if cfg.kv not in KV_MODES:
            raise ValueError(f"worker.kv must be one of {KV_MODES}, got {cfg.kv!r}")
        return cfg

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
