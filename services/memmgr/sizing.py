"""Resolve memmgr's pools to concrete block counts: from the config, or sized from free memory.

Explicit pools: num_blocks, or bytes // bytes-per-block. `auto`: one pool per (head_dim, dtype)
found in the mesh's models (muxserve.checkpoint; dtype = memmgr.auto_dtype), together given
`auto_memory_fraction x (free memory - the models' weight bytes)`, split between pools in
proportion to sum(rate x per-token KV bytes) of their LLMs. Free memory is measured: CUDA
`mem_get_info`, on CPU min(MemAvailable, free /dev/shm).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from muxserve import checkpoint
from muxserve.config import ConfigError, MeshConfig
from services.memmgr.config import MemmgrConfig, PoolSpec
from services.memmgr.quotas import split
from services.memmgr.segment import TORCH_DTYPES

log = logging.getLogger(__name__)


def block_bytes(block_size: int, head_dim: int, dtype: str) -> int:
    return 2 * block_size * head_dim * TORCH_DTYPES[dtype].itemsize  # K and V


def resolve_pools(cfg: MemmgrConfig, mesh: MeshConfig | None, device: str = "cpu") -> list[PoolSpec]:
    """Concrete pools (num_blocks > 0) for this unit; ConfigError when nothing fits."""
    if cfg.pools is not None:
        return [_explicit(p, cfg.block_size) for p in cfg.pools]
    if mesh is None or not mesh.models:
        raise ConfigError("memmgr.pools is auto but there are no models to size the pools from")
    shapes = [shape + (m.rate,) for m in mesh.models if (shape := _model_shape(m.path, cfg.auto_dtype))]
    if not shapes:
        raise ConfigError("memmgr auto sizing: no model's config.json can be read (see the warnings above)")
    weights = sum(_weight_bytes(m.path) for m in mesh.models)
    budget = int(cfg.auto_memory_fraction * (free_memory(device) - weights))
    demand: dict[tuple[int, str], float] = {}
    for head_dim, dtype, bpt, rate in shapes:
        demand[(head_dim, dtype)] = demand.get((head_dim, dtype), 0.0) + max(rate, 1e-6) * bpt * head_dim
    pools = []
    for (head_dim, dtype), nbytes in split(max(budget, 0), demand).items():
        n = nbytes // block_bytes(cfg.block_size, head_dim, dtype)
        if n < 1:
            raise ConfigError(f"memmgr auto sizing: no room for a head_dim={head_dim}/{dtype} pool "
                              f"(budget {budget / 2**20:.1f} MiB after {weights / 2**20:.1f} MiB of weights)")
        pools.append(PoolSpec(head_dim, dtype, num_blocks=n))
    return pools


def _explicit(p: PoolSpec, block_size: int) -> PoolSpec:
    if p.num_blocks:
        return p
    n = p.bytes // block_bytes(block_size, p.head_dim, p.dtype)
    if n < 1:
        raise ConfigError(f"memmgr pool head_dim={p.head_dim}/{p.dtype}: {p.bytes} bytes is less than one block")
    return PoolSpec(p.head_dim, p.dtype, num_blocks=n)


def _model_shape(path: str, dtype: str) -> tuple[int, str, int] | None:
    """(head_dim, dtype, layers x kv_heads) of the checkpoint (muxserve.checkpoint); None (logged) when it cannot
    be read: that model fails alone (the placer leaves it out), the pools are sized for the others."""
    try:
        ck = checkpoint.describe(path)
    except (OSError, ValueError) as e:
        log.warning("memmgr auto sizing: %s/config.json cannot be read (%s): no pool sized for it", path, e)
        return None
    return ck.head_dim, dtype, ck.blocks_per_token_block


def _weight_bytes(path: str) -> int:
    try:
        return checkpoint.describe(path).file_bytes
    except (OSError, ValueError):
        return 0


def free_memory(device: str = "cpu") -> int:
    """Bytes free for the pool now: CUDA free memory, or min(MemAvailable, free /dev/shm) on CPU."""
    if device.startswith("cuda"):  # pragma: no cover - needs a GPU
        import torch

        return torch.cuda.mem_get_info()[0]
    avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        st = os.statvfs("/dev/shm")
        avail = min(avail, st.f_bavail * st.f_frsize)
    except OSError:
        pass
    return avail
