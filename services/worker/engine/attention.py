"""Paged attention over the head-wise KV pool for a FLAT batch of tokens from many sequences.

A step mixes prefill chunks of any length and single decode tokens. Its metadata lives in one
`AttnContext`, built once per step by `build_context` and shared by every layer:
  - new K/V are written into pool slots (`write_index`, rows of the flat pool view),
  - each sequence's whole context (cached + new) is gathered from its blocks (`read_blocks`),
  - queries are padded to [B, Qmax] only when chunk lengths differ (`q_gather` / `out_rows`).
Block ids and slots follow pool.py's layout (the one place that defines it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .types import InvalidRequestError


@dataclass
class AttnContext:
    positions: torch.Tensor  # [T] long: position of each flat token in its sequence
    write_index: torch.Tensor  # [L, T * H] long: row of the flat pool view [N * 2 * bs, hd] for K (V = +bs)
    read_blocks: torch.Tensor  # [L, B, H, NB] long: each sequence's context blocks (padding -> block 0)
    last_rows: torch.Tensor  # [B] long: flat index of each sequence's last token
    mask: torch.Tensor | None  # [B, 1, Qmax, C] bool (True = attend); None when every key is visible
    q_gather: torch.Tensor | None  # [B * Qmax] long: flat token of each padded query row; None if uniform
    out_rows: torch.Tensor | None  # [T] long: padded query row of each flat token; None if uniform
    num_seqs: int
    max_q: int
    ctx_len: int  # keys per sequence after gathering (C)
    block_size: int


def _seq_blocks(table: list[int], n_tb: int, L: int, H: int, num_blocks: int, seq: int) -> torch.Tensor:
    need = n_tb * L * H
    if len(table) < need:
        raise InvalidRequestError(f"seq {seq}: block table has {len(table)} ids, needs {need} for its context")
    t = torch.tensor(table[:need], dtype=torch.long).view(n_tb, L, H)  # [n_tb, L, H]
    if need and (int(t.min()) < 0 or int(t.max()) >= num_blocks):
        raise InvalidRequestError(f"seq {seq}: block id out of range [0, {num_blocks})")
    return t


def _causal_mask(qpos: torch.Tensor, C: int, window: int | None) -> torch.Tensor:
    """qpos [B, Qmax] -> [B, 1, Qmax, C] bool: key j visible to a query at p iff j <= p (and p - j < window)."""
    kpos = torch.arange(C)
    mask = kpos[None, None, :] <= qpos[:, :, None]
    if window is not None:
        mask &= (qpos[:, :, None] - kpos[None, None, :]) < window
    return mask[:, None]


def build_context(
    seqs: list[tuple[int, int, list[int]]],
    num_layers: int,
    num_kv_heads: int,
    block_size: int,
    num_blocks: int,
    sliding_window: int | None = None,
    device: str | torch.device = "cpu",
    seq_ids: list[int] | None = None,
) -> AttnContext:
    """seqs: (start_pos, n_tokens, block_table) per sequence, in flat-batch order (seq_ids name them in errors)."""
    L, H, bs = num_layers, num_kv_heads, block_size
    lens = [n for _, n, _ in seqs]
    if not seqs or min(lens) < 1:
        raise InvalidRequestError("a step needs at least one sequence, each with at least one token")
    ends = [s + n for s, n, _ in seqs]
    NB = -(-max(ends) // bs)
    positions, writes, reads = [], [], []
    for i, (start, n, table) in enumerate(seqs):
        n_tb = -(-(start + n) // bs)
        blocks = _seq_blocks(table, n_tb, L, H, num_blocks, seq_ids[i] if seq_ids else i)  # [n_tb, L, H]
        pos = torch.arange(start, start + n)
        positions.append(pos)
        rows = (blocks[pos // bs] * 2 * bs) + (pos % bs)[:, None, None]  # [n, L, H] K rows
        writes.append(rows)
        reads.append(F.pad(blocks.permute(1, 2, 0), (0, NB - n_tb)))  # [L, H, NB]
    positions_t = torch.cat(positions)  # [T]
    write_index = torch.cat(writes).permute(1, 0, 2).reshape(L, -1)  # [L, T * H]
    read_blocks = torch.stack(reads, dim=1)  # [L, B, H, NB]
    last_rows = torch.tensor(lens).cumsum(0) - 1  # [B]
    B, Qm = len(seqs), max(lens)
    C = NB * bs
    q_gather = out_rows = None
    if min(lens) != Qm:
        starts = torch.tensor([0] + lens[:-1]).cumsum(0)  # [B]
        offs = torch.arange(Qm)  # [Qm]
        valid = offs[None, :] < torch.tensor(lens)[:, None]  # [B, Qm]
        q_gather = torch.where(valid, starts[:, None] + offs[None, :], 0).reshape(-1)  # [B * Qm]
        out_rows = (torch.arange(B * Qm).view(B, Qm))[valid]  # [T]
    qpos = positions_t[q_gather].view(B, Qm) if q_gather is not None else positions_t.view(B, Qm)
    mask = None
    if B == 1 and Qm == 1 and sliding_window is None:
        C = ends[0]  # one decode token sees its whole context: slice keys, no mask
    else:
        mask = _causal_mask(qpos, C, sliding_window)
    to = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
    return AttnContext(
        to(positions_t), to(write_index), to(read_blocks), to(last_rows), to(mask),
        to(q_gather), to(out_rows), B, Qm, C, bs,
    )


def write_kv(pool: torch.Tensor, layer: int, k: torch.Tensor, v: torch.Tensor, ctx: AttnContext) -> None:
    """k, v [T, H, hd] -> their pool slots (in place)."""
    flat = pool.view(-1, pool.shape[-1])  # [N * 2 * bs, hd]
    rows = ctx.write_index[layer]  # [T * H]
    flat.index_copy_(0, rows, k.reshape(-1, k.shape[-1]))
    flat.index_copy_(0, rows + ctx.block_size, v.reshape(-1, v.shape[-1]))


def gather_kv(pool: torch.Tensor, layer: int, ctx: AttnContext) -> tuple[torch.Tensor, torch.Tensor]:
    """-> K, V of every sequence's context, [B, H, C, hd] each."""
    blocks = ctx.read_blocks[layer]  # [B, H, NB]
    B, H, NB = blocks.shape
    hd = pool.shape[-1]
    k = pool[:, 0][blocks].view(B, H, NB * ctx.block_size, hd)
    v = pool[:, 1][blocks].view(B, H, NB * ctx.block_size, hd)
    return k[:, :, : ctx.ctx_len], v[:, :, : ctx.ctx_len]


def paged_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pool: torch.Tensor, layer: int, ctx: AttnContext
) -> torch.Tensor:
    """q [T, Hq, hd], k/v [T, H, hd] (new tokens, RoPE applied) -> attention output [T, Hq * hd]."""
    T, Hq, hd = q.shape
    write_kv(pool, layer, k, v, ctx)
    kc, vc = gather_kv(pool, layer, ctx)  # [B, H, C, hd]
    B, Qm = ctx.num_seqs, ctx.max_q
    qp = q if ctx.q_gather is None else q[ctx.q_gather]  # [B * Qm, Hq, hd]
    qp = qp.view(B, Qm, Hq, hd).transpose(1, 2)  # [B, Hq, Qm, hd]
    o = F.scaled_dot_product_attention(qp, kc, vc, attn_mask=ctx.mask, enable_gqa=Hq != kc.shape[1])
    o = o.transpose(1, 2).reshape(B * Qm, Hq * hd)  # [B * Qm, Hq * hd]
    return o if ctx.out_rows is None else o[ctx.out_rows]  # [T, Hq * hd]
