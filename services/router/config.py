"""The router's config, built from the mesh config's validated `router` section (muxserve/settings.py
has every key, its type and default; validated there, once).

Where workers come from: a placer address given explicitly (key or environment) wins; otherwise a
static `workers` table, when present, is used; otherwise the placer at the mesh's `placer` address.
A model's context length comes from its checkpoint's config.json (`max_position_embeddings`), lowered
to what the workers hosting it report in GetStatus (limits.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from muxserve import checkpoint
from muxserve.config import MeshConfig
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
    """The RouterConfig of a validated mesh config (placer address: the key, MUXSERVE_PLACER_ADDRESS, else
    none when a static `workers` table is given, else the mesh's placer)."""
    sec = mesh.section("router")
    placer = sec.placer_address or mesh.addresses.get("placer")
    if not placer and not sec.workers:
        placer = mesh.address("placer")
    pop = sec.popularity
    return RouterConfig(
        models={m.name: model_limits(m.name, m.path) for m in mesh.models},
        host=sec.host, port=sec.port, placer_address=placer or None,
        static_workers={k: list(v) for k, v in sec.workers.items()},
        redis_url=mesh.redis_url, bucket_s=pop.bucket_s, ttl_s=pop.ttl_s, redis_timeout_s=pop.timeout_s,
        status_interval_s=sec.status_interval_s, unavailable_wait_s=sec.unavailable_wait_s,
        http_host=sec.http_host, http_port=sec.http_port, api_keys=tuple(dict.fromkeys(sec.api_keys)),
        max_message_bytes=sec.max_message_bytes, max_concurrent_streams=sec.max_concurrent_streams,
        bounds=bounds_from_section(sec))
