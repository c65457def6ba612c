"""Token sampling: greedy, temperature, top_k, top_p; reproducible per (seed, sample_index).

Contract: for a seeded request, the token drawn at sample_index i depends only on (seed, i) and the
logits row, so a prefill process and a decode process (or a rerun after preemption) draw the same
tokens. Draws are inverse-CDF over the filtered, descending-sorted distribution with one uniform
number from a torch.Generator seeded by a stable hash of (seed, i). Unseeded requests use fresh
OS randomness. temperature 0 is exactly argmax (all greedy rows in one batched argmax).
"""

from __future__ import annotations

import hashlib
import secrets

import torch

from .types import SamplingParams


def draw_seed(seed: int | None, sample_index: int) -> int:
    """A 63-bit generator seed from (seed, sample_index); stable across processes and runs."""
    if seed is None:
        return secrets.randbits(63)
    digest = hashlib.blake2b(f"{seed}:{sample_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def filtered_probs(row: torch.Tensor, p: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """row [V] logits -> (probs [K], token ids [K]) after temperature, top_k, top_p; sorted descending."""
    vals, ids = (row.float() / p.temperature).sort(descending=True)  # [V]
    if 0 < p.top_k < vals.numel():
        vals, ids = vals[: p.top_k], ids[: p.top_k]
    probs = torch.softmax(vals, dim=-1)  # [K]
    if p.top_p < 1.0:
        keep = (probs.cumsum(0) - probs) < p.top_p  # smallest prefix with mass >= top_p (>= 1 token)
        probs, ids = probs[keep], ids[keep]
        probs = probs / probs.sum()
    return probs, ids


def sample_row(row: torch.Tensor, p: SamplingParams, sample_index: int) -> int:
    """One draw from `row` under `p` (temperature > 0)."""
    probs, ids = filtered_probs(row, p)
    gen = torch.Generator().manual_seed(draw_seed(p.seed, sample_index))
    u = torch.rand((), generator=gen, dtype=torch.float64)
    cdf = probs.double().cumsum(0)  # [K]
    j = int(torch.searchsorted(cdf, u * cdf[-1], right=True).clamp(max=ids.numel() - 1))
    return int(ids[j])


def sample(logits: torch.Tensor, params: list[SamplingParams], sample_indices: list[int]) -> list[int]:
    """logits [B, V] -> one token id per row."""
    out = [0] * len(params)
    greedy = [i for i, p in enumerate(params) if p.temperature == 0]
    if greedy:
        rows = logits if len(greedy) == len(params) else logits[greedy]  # [G, V]
        picks = rows.argmax(dim=-1).tolist()  # [G]
        for i, t in zip(greedy, picks):
            out[i] = t
    sampled = [i for i, p in enumerate(params) if p.temperature != 0]
    rows = logits[sampled].detach().cpu() if sampled else None  # [S, V]
    for r, i in enumerate(sampled):
        out[i] = sample_row(rows[r], params[i], sample_indices[i])
    return out
