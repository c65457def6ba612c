"""The router's config, built from the mesh YAML's `router` section (validated when built).

    router:
      host: 127.0.0.1
      port: 50051
      placer_address: host:port     # optional; also MUXSERVE_PLACER_ADDRESS
      workers: {model: [host:port, ...]}   # optional static routing table (tests, no placer)
      popularity: {bucket_s: 1.0, ttl_s: 3600, timeout_s: 0.5}
      status_interval_s: 5.0        # how often workers' GetStatus refines each model's context length
      unavailable_wait_s: 30.0      # how long a request waits for a host of its model (re-placement,
                                    # a worker loading or draining it, a restart) before UNAVAILABLE
      http_host: 127.0.0.1          # the OpenAI-compatible HTTP API and /metrics (default: `host`)
      http_port: 8000               # 0 picks a free port; -1 turns HTTP off
      api_keys: [KEY, ...]          # also MUXSERVE_API_KEY (one key, added); none configured = open
      max_message_bytes: 4194304    # largest gRPC message / HTTP body accepted (4 MiB)
      max_concurrent_streams: 1024  # Generate calls and HTTP completions in flight, all fronts together
      max_stop_strings: 16          # stop strings per request...
      max_stop_chars: 256           # ...each at most this long
      max_request_id_chars: 128
      max_prompt_chars: 1000000     # a text prompt or the chat messages' content (the worker checks the same)

Where workers come from: a placer address given explicitly (key or environment) wins; otherwise a
static `workers` table, when present, is used; otherwise the placer at the mesh's `placer` address.
A model's context length comes from its checkpoint's config.json (`max_position_embeddings`), lowered
to what the workers hosting it report in GetStatus (limits.py).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from muxserve import checkpoint
from muxserve.config import ConfigError, MeshConfig
from muxserve.validation import RequestBounds, bounds_from_section  # noqa: F401 (RequestBounds: re-exported)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelLimits:
    """What the router checks a request against; 0 means unknown (the worker checks instead)."""

    name: str
    max_model_len: int = 0
    vocab_size: int = 0


@dataclass
class RouterConfig:
    models: dict[str, ModelLimits]
    host: str = "127.0.0.1"
    port: int = 50051
    placer_address: str | None = None
    static_workers: dict[str, list[str]] = field(default_factory=dict)
    redis_url: str = "redis://127.0.0.1:6379/0"
    bucket_s: float = 1.0
    ttl_s: float = 3600.0
    redis_timeout_s: float = 0.5
    status_interval_s: float = 5.0  # how often worker-reported context lengths are refreshed
    unavailable_wait_s: float = 30.0  # a request with no reachable host waits (and retries) this long
    http_host: str | None = None  # None: `host`
    http_port: int = 8000  # -1: no HTTP server
    api_keys: tuple[str, ...] = ()
    max_message_bytes: int = 4 << 20
    max_concurrent_streams: int = 1024
    bounds: RequestBounds = field(default_factory=RequestBounds)

    def __post_init__(self) -> None:
        for model, addresses in self.static_workers.items():
            if model not in self.models:
                raise ConfigError(f"router.workers: {model!r} is not in `models`")
            if not isinstance(addresses, list) or not all(isinstance(a, str) and a for a in addresses):
                raise ConfigError(f"router.workers[{model!r}] must be a list of host:port strings")
        if self.bucket_s <= 0 or self.ttl_s <= 0 or self.redis_timeout_s <= 0:
            raise ConfigError("router.popularity: bucket_s, ttl_s and timeout_s must be > 0")
        if self.status_interval_s <= 0:
            raise ConfigError(f"router.status_interval_s must be > 0, got {self.status_interval_s}")
        if self.unavailable_wait_s < 0:
            raise ConfigError(f"router.unavailable_wait_s must be >= 0, got {self.unavailable_wait_s}")
        if self.http_port < -1:
            raise ConfigError(f"router.http_port must be a port, 0 (any) or -1 (off), got {self.http_port}")
        if min(self.max_message_bytes, self.max_concurrent_streams) < 1:
            raise ConfigError("router.max_message_bytes and max_concurrent_streams must be >= 1")
        if not all(isinstance(k, str) and k for k in self.api_keys):
            raise ConfigError("router.api_keys must be a list of non-empty strings")

    @property
    def static(self) -> bool:
        return self.placer_address is None


def model_limits(name: str, path: str | Path) -> ModelLimits:
    """The context length and vocab size of the checkpoint at `path` (muxserve.checkpoint; 0 where unknown)."""
    try:
        ck = checkpoint.describe(path)
    except (OSError, ValueError) as exc:
        log.warning("model %s: cannot read %s/config.json (%s); the worker will check lengths", name, path, exc)
        return ModelLimits(name)
    return ModelLimits(name, ck.max_model_len, ck.vocab_size)


def from_mesh(mesh: MeshConfig) -> RouterConfig:
    sec = mesh.section("router")
    pop = sec.get("popularity") or {}
    placer = sec.get("placer_address") or os.environ.get("MUXSERVE_PLACER_ADDRESS")
    workers = sec.get("workers") or {}
    if not isinstance(workers, dict):
        raise ConfigError("router.workers must map model names to lists of host:port")
    if not placer and not workers:
        placer = mesh.address("placer")
    return RouterConfig(
        models={m.name: model_limits(m.name, m.path) for m in mesh.models},
        host=str(sec["host"]), port=int(sec["port"]), placer_address=placer or None,
        static_workers={k: list(v) if isinstance(v, (list, tuple)) else v for k, v in workers.items()},
        redis_url=mesh.redis_url, bucket_s=float(pop.get("bucket_s", 1.0)),
        ttl_s=float(pop.get("ttl_s", 3600)), redis_timeout_s=float(pop.get("timeout_s", 0.5)),
        status_interval_s=float(sec.get("status_interval_s", 5.0)),
        unavailable_wait_s=float(sec.get("unavailable_wait_s", 30.0)),
        http_host=sec.get("http_host"), http_port=int(sec.get("http_port", 8000)), api_keys=api_keys(sec),
        max_message_bytes=int(sec.get("max_message_bytes", 4 << 20)),
        max_concurrent_streams=int(sec.get("max_concurrent_streams", 1024)),
        bounds=request_bounds(sec))


def request_bounds(sec: dict) -> RequestBounds:
    """router.max_stop_strings / max_stop_chars / max_request_id_chars / max_prompt_chars (shared with
    the worker: muxserve/validation.py)."""
    try:
        return bounds_from_section(sec)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def api_keys(sec: dict) -> tuple[str, ...]:
    """router.api_keys plus MUXSERVE_API_KEY, when set."""
    keys = sec.get("api_keys") or []
    if isinstance(keys, str) or not isinstance(keys, list):
        raise ConfigError("router.api_keys must be a list of strings")
    env = os.environ.get("MUXSERVE_API_KEY")
    return tuple(dict.fromkeys([*keys, *([env] if env else [])]))
