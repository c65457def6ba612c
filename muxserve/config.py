"""The deployment config: one YAML file shared by all services, plus environment overrides.

Shape (every key has a default except `models`):

    redis_url: redis://127.0.0.1:6379/0
    models:                       # the LLMs to serve
      - {name: tiny-llama, path: models/tiny-llama, rate: 1.0}   # path: local HF folder; rate: req/s prior
    cluster: {device: cpu, nodes: 1, devices_per_node: 2}         # device: cpu | cuda
    router: {host: 127.0.0.1, port: 50051}
    placer: {host: 127.0.0.1, port: 50052, ...}                   # extra keys: services/placer/config.py
    memmgr: {host: 127.0.0.1, port: 50053, ...}                   # extra keys: services/memmgr/config.py
    worker: {host: 127.0.0.1, port: 50060, count: 1, ...}         # worker i listens on port + i

Relative model paths resolve against the config file's folder. Environment variables override:
MUXSERVE_REDIS_URL, MUXSERVE_<SERVICE>_HOST / _PORT, MUXSERVE_PLACER_ADDRESS, MUXSERVE_MEMMGR_ADDRESS.
Each service builds its own config dataclass from its section (`section(raw, "placer")`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SERVICES = ("router", "placer", "memmgr", "worker")
DEFAULT_PORTS = {"router": 50051, "placer": 50052, "memmgr": 50053, "worker": 50060}


class ConfigError(ValueError):
    """The config file is malformed; the message names the key."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: str
    rate: float = 1.0


@dataclass(frozen=True)
class ClusterSpec:
    device: str = "cpu"
    nodes: int = 1
    devices_per_node: int = 2


@dataclass
class MeshConfig:
    """What every service needs to find the others and the models."""

    models: list[ModelSpec]
    redis_url: str = "redis://127.0.0.1:6379/0"
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    raw: dict = field(default_factory=dict)  # the whole parsed YAML, for per-service sections

    def section(self, service: str) -> dict:
        """The service's section with host/port defaults and environment overrides applied."""
        sec = dict(self.raw.get(service) or {})
        sec.setdefault("host", "127.0.0.1")
        sec.setdefault("port", DEFAULT_PORTS[service])
        env = service.upper()
        if f"MUXSERVE_{env}_HOST" in os.environ:
            sec["host"] = os.environ[f"MUXSERVE_{env}_HOST"]
        if f"MUXSERVE_{env}_PORT" in os.environ:
            sec["port"] = int(os.environ[f"MUXSERVE_{env}_PORT"])
        return sec

    def address(self, service: str) -> str:
        """host:port where other services reach `service` (MUXSERVE_<SERVICE>_ADDRESS overrides)."""
        override = os.environ.get(f"MUXSERVE_{service.upper()}_ADDRESS")
        if override:
            return override
        sec = self.section(service)
        host = sec["host"] if sec["host"] not in ("0.0.0.0", "::", "[::]") else "127.0.0.1"
        return f"{host}:{sec['port']}"

    def model(self, name: str) -> ModelSpec | None:
        return next((m for m in self.models if m.name == name), None)


def _models(raw: dict, base: Path) -> list[ModelSpec]:
    items = raw.get("models")
    if not isinstance(items, list) or not items:
        raise ConfigError("`models` must be a non-empty list of {name, path, rate}")
    out, seen = [], set()
    for i, m in enumerate(items):
        if not isinstance(m, dict) or not m.get("name") or not m.get("path"):
            raise ConfigError(f"models[{i}] needs `name` and `path`")
        if m["name"] in seen:
            raise ConfigError(f"models[{i}]: duplicate name {m['name']!r}")
        seen.add(m["name"])
        rate = float(m.get("rate", 1.0))
        if rate < 0:
            raise ConfigError(f"models[{i}] ({m['name']}): rate must be >= 0, got {rate}")
        path = Path(os.path.expanduser(str(m["path"])))
        out.append(ModelSpec(str(m["name"]), str(path if path.is_absolute() else base / path), rate))
    return out


def from_dict(raw: dict, base: Path | str = ".") -> MeshConfig:
    """Build a MeshConfig from parsed YAML; relative model paths resolve against `base`."""
    if not isinstance(raw, dict):
        raise ConfigError("config must be a mapping")
    cl = raw.get("cluster") or {}
    cluster = ClusterSpec(str(cl.get("device", "cpu")), int(cl.get("nodes", 1)),
                          int(cl.get("devices_per_node", os.cpu_count() or 1)))
    if cluster.device not in ("cpu", "cuda"):
        raise ConfigError(f"cluster.device must be cpu or cuda, got {cluster.device!r}")
    redis_url = os.environ.get("MUXSERVE_REDIS_URL", raw.get("redis_url", "redis://127.0.0.1:6379/0"))
    return MeshConfig(_models(raw, Path(base).resolve()), redis_url, cluster, raw)


def load(path: str | Path) -> MeshConfig:
    """Read and validate the YAML config at `path`."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    return from_dict(raw or {}, path.parent)
