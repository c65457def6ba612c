"""memmgr's config: the `memmgr:` section of the mesh YAML, validated when built.

    memmgr:
      host: 127.0.0.1
      port: 50053
      unit_id: unit-0
      block_size: 32                 # tokens per head-wise block (the workers adopt it)
      pools:                         # one pool per (head_dim, dtype); or `auto` (the default)
        - {head_dim: 64, dtype: float32, num_blocks: 4096}
        - {head_dim: 128, dtype: bfloat16, bytes: 2GiB}   # or a size; num_blocks derived
      auto_memory_fraction: 0.5      # auto: this fraction of (free memory - the unit's weights)
      auto_dtype: float32            # auto: the KV dtype (must match the workers' engine dtype)
      heartbeat_timeout_s: 10        # a session silent this long loses its blocks
      quota:                         # ADBS adaptation
        adapt_interval_s: 5          # 0 = only on the AdaptQuotas RPC
        threshold: 0.9               # LLMs using under this fraction of their quota donate
        donate_fraction: 0.5         # of their unused quota, per round
      integrity_interval_s: 30       # the idle integrity check; 0 = off

`pools: auto` sizes one pool per (head_dim, dtype) found among the mesh's models (their
config.json) from measured free memory minus the models' weights (see sizing.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from muxserve.config import ConfigError
from services.memmgr.quotas import QuotaPolicy
from services.memmgr.types import DTYPES

_UNITS = {"": 1, "b": 1, "kib": 2**10, "kb": 10**3, "mib": 2**20, "mb": 10**6, "gib": 2**30, "gb": 10**9}


@dataclass(frozen=True)
class PoolSpec:
    """One pool: num_blocks, or bytes to be divided into blocks (num_blocks 0 until resolved)."""

    head_dim: int
    dtype: str
    num_blocks: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class MemmgrConfig:
    host: str = "127.0.0.1"
    port: int = 50053
    unit_id: str = "unit-0"
    block_size: int = 32
    pools: tuple[PoolSpec, ...] | None = None  # None = auto
    auto_memory_fraction: float = 0.5
    auto_dtype: str = "float32"
    heartbeat_timeout_s: float = 10.0
    quota: QuotaPolicy = field(default_factory=QuotaPolicy)
    integrity_interval_s: float = 30.0

    @classmethod
    def from_section(cls, sec: dict) -> "MemmgrConfig":
        """Build and validate from `mesh.section("memmgr")`; ConfigError names the bad key."""
        try:
            q = sec.get("quota") or {}
            cfg = cls(str(sec.get("host", "127.0.0.1")), int(sec.get("port", 50053)),
                      str(sec.get("unit_id", "unit-0")), int(sec.get("block_size", cls.block_size)),
                      _pools(sec.get("pools", "auto")), float(sec.get("auto_memory_fraction", 0.5)),
                      str(sec.get("auto_dtype", "float32")),
                      float(sec.get("heartbeat_timeout_s", 10.0)),
                      QuotaPolicy(float(q.get("adapt_interval_s", 5.0)), float(q.get("threshold", 0.9)),
                                  float(q.get("donate_fraction", 0.5))),
                      float(sec.get("integrity_interval_s", 30.0)))
        except (TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"memmgr: {e}") from None
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.block_size < 1:
            raise ConfigError(f"memmgr.block_size must be >= 1, got {self.block_size}")
        if not 0 < self.auto_memory_fraction <= 1:
            raise ConfigError(f"memmgr.auto_memory_fraction must be in (0, 1], got {self.auto_memory_fraction}")
        if self.auto_dtype not in DTYPES:
            raise ConfigError(f"memmgr.auto_dtype must be one of {DTYPES}, got {self.auto_dtype!r}")
        if self.heartbeat_timeout_s <= 0:
            raise ConfigError(f"memmgr.heartbeat_timeout_s must be > 0, got {self.heartbeat_timeout_s}")
        if self.integrity_interval_s < 0:
            raise ConfigError(f"memmgr.integrity_interval_s must be >= 0, got {self.integrity_interval_s}")
        try:
            self.quota.validate()
        except ValueError as e:
            raise ConfigError(f"memmgr.{e}") from None


def _pools(raw) -> tuple[PoolSpec, ...] | None:
    if raw in (None, "auto"):
        return None
    if not isinstance(raw, list) or not raw:
        raise ConfigError("memmgr.pools must be `auto` or a non-empty list of {head_dim, dtype, num_blocks|bytes}")
    out, seen = [], set()
    for i, p in enumerate(raw):
        spec = _pool(i, p)
        if (spec.head_dim, spec.dtype) in seen:
            raise ConfigError(f"memmgr.pools[{i}]: a second pool for head_dim={spec.head_dim}/{spec.dtype}")
        seen.add((spec.head_dim, spec.dtype))
        out.append(spec)
    return tuple(out)


def _pool(i: int, p) -> PoolSpec:
    if not isinstance(p, dict) or "head_dim" not in p or "dtype" not in p:
        raise ConfigError(f"memmgr.pools[{i}] needs head_dim and dtype")
    spec = PoolSpec(int(p["head_dim"]), str(p["dtype"]), int(p.get("num_blocks", 0)), parse_bytes(p.get("bytes", 0)))
    if spec.head_dim < 1:
        raise ConfigError(f"memmgr.pools[{i}].head_dim must be >= 1, got {spec.head_dim}")
    if spec.dtype not in DTYPES:
        raise ConfigError(f"memmgr.pools[{i}].dtype must be one of {DTYPES}, got {spec.dtype!r}")
    if (spec.num_blocks > 0) == (spec.bytes > 0):
        raise ConfigError(f"memmgr.pools[{i}] needs exactly one of num_blocks or bytes (> 0)")
    return spec


def parse_bytes(v) -> int:
    """4096, "512MiB", "2GiB", "1.5 GB" -> bytes."""
    if isinstance(v, (int, float)):
        return int(v)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(v))
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"memmgr: cannot parse a size from {v!r} (e.g. 512MiB, 2GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
