"""Quotas: the initial split of a pool among its LLMs and MuxServe's ADBS adaptation (pure functions).

Quotas are in head-wise blocks. The initial quota of LLM m is its share of the pool in proportion to
rate_m x blocks_per_token_block_m (the paper's rate x per-token KV size), rounded by largest
remainder so the quotas sum exactly to the pool's capacity. ADBS, every few seconds: an LLM using
under `threshold` of its quota and not saturated donates `fraction` of its unused quota; the
donations are split among the saturated LLMs (those refused a lease or reporting waiting requests)
in proportion to their weights. Quotas always sum to what they summed to before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class QuotaPolicy:
    """ADBS parameters (config keys under memmgr.quota; their ranges are checked in muxserve/settings.py)."""

    adapt_interval_s: float = 5.0  # how often the adaptation runs; 0 = never on a timer
    threshold: float = 0.9         # LLMs using under this fraction of their quota may donate
    donate_fraction: float = 0.5   # share of a donor's unused quota given away per round


def split(total: int, weights: dict[str, float]) -> dict[str, int]:
    """`total` split in proportion to weights (all zero: equally), summing exactly to total."""
    if not weights:
        return {}
    if sum(weights.values()) <= 0:
        weights = {k: 1.0 for k in weights}
    wsum = sum(weights.values())
    exact = {k: total * w / wsum for k, w in weights.items()}
    out = {k: math.floor(v) for k, v in exact.items()}
    left = total - sum(out.values())
    by_remainder = sorted(exact, key=lambda k: (out[k] - exact[k], k))  # largest remainder first
    for k in by_remainder[:left]:
        out[k] += 1
    return out


def initial_quotas(capacity: int, rates: dict[str, float], blocks_per_token: dict[str, int]) -> dict[str, int]:
    """Each LLM's share of `capacity` in proportion to rate x blocks per token block."""
    return split(capacity, {m: rates[m] * blocks_per_token[m] for m in rates})


def adapt(quota: dict[str, int], used: dict[str, int], saturated: set[str],
          weights: dict[str, float], policy: QuotaPolicy) -> dict[str, int]:
    """One ADBS round: under-used LLMs donate unused quota to saturated ones; returns new quotas."""
    takers = {m for m in saturated if m in quota}
    donors = [m for m in quota if m not in takers and used.get(m, 0) < policy.threshold * quota[m]]
    if not takers or not donors:
        return dict(quota)
    new = dict(quota)
    pot = 0
    for m in donors:
        gift = math.floor(policy.donate_fraction * (quota[m] - used.get(m, 0)))
        new[m] -= gift
        pot += gift
    for m, extra in split(pot, {m: weights.get(m, 0.0) for m in takers}).items():
        new[m] += extra
    return new
