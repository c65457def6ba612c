"""The worker's config: its section of the deployment YAML (`worker:`), validated when built.

Keys (all optional):
    host, port          listen address (`muxserve up` starts one worker per unit; worker i on port + i)
    advertise           host:port the router reaches this worker at (default host:port, or the hostname
                        when host is 0.0.0.0)
    models              static list of model names to host without asking the placer (tests, demos)
    use_memmgr          lease KV blocks from memmgr (default true when not static); false: a local pool
    engine              EngineConfig keys (services/worker/engine/config.py): block_size, num_blocks, ...
    drain_timeout_s     how long an unloaded LLM may finish its in-flight requests (default 120)
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field


@dataclass
class WorkerConfig:
    host: str = "127.0.0.1"
    port: int = 50060
    worker_id: str = "worker-0"
    advertise: str = ""
    models: list[str] = field(default_factory=list)
    use_memmgr: bool = True
    engine: dict = field(default_factory=dict)
    drain_timeout_s: float = 120.0

    @classmethod
    def from_section(cls, sec: dict, worker_id: str | None = None) -> "WorkerConfig":
        models = sec.get("models") or []
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise ValueError("worker.models must be a list of model names")
        cfg = cls(host=str(sec.get("host", "127.0.0.1")), port=int(sec.get("port", 50060)),
                  worker_id=worker_id or str(sec.get("worker_id", f"worker-{socket.gethostname()}")),
                  advertise=str(sec.get("advertise", "")), models=list(models),
                  use_memmgr=bool(sec.get("use_memmgr", not models)), engine=dict(sec.get("engine") or {}),
                  drain_timeout_s=float(sec.get("drain_timeout_s", 120.0)))
        return cfg

    def advertised_address(self, bound_port: int) -> str:
        if self.advertise:
            return self.advertise
        host = socket.gethostname() if self.host in ("0.0.0.0", "::", "[::]") else self.host
        return f"{host}:{bound_port}"
