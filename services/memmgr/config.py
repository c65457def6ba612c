"""memmgr's config, built from the mesh config's validated `memmgr:` section (muxserve/settings.py has
every key, its type, default and range: `Memmgr`; validated there, once).

`pools: auto` sizes one pool per (head_dim, dtype) found among the mesh's models (their
config.json) from measured free memory minus the models' weights (see sizing.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from muxserve.config import section_of
from muxserve.config_errors import ConfigError
from muxserve.settings import Memmgr
from services.memmgr.quotas import QuotaPolicy

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
    def from_section(cls, sec) -> "MemmgrConfig":
        """Build from `mesh.section("memmgr")` (or a dict of its keys, validated as that section)."""
        sec = section_of(Memmgr, sec, "memmgr")
        pools = None if sec.pools is None else tuple(PoolSpec(p.head_dim, p.dtype, p.num_blocks, p.bytes)
                                                      for p in sec.pools)
        q = sec.quota
        return cls(sec.host, sec.port, sec.unit_id, sec.block_size, pools, sec.auto_memory_fraction, sec.auto_dtype,
                   sec.heartbeat_timeout_s, QuotaPolicy(q.adapt_interval_s, q.threshold, q.donate_fraction),
                   sec.integrity_interval_s)


def parse_bytes(v) -> int:
    """4096, "512MiB", "2GiB", "1.5 GB" -> bytes."""
    if isinstance(v, (int, float)):
        return int(v)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(v))
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"memmgr: cannot parse a size from {v!r} (e.g. 512MiB, 2GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
