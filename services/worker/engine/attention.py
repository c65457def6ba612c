"""Paged attention over the head-wise KV pool for a FLAT batch of tokens from many sequences.

A step mixes prefill chunks of any length and single decode tokens. Its metadata lives in one
`AttnContext`, built once per step by `build_context` (vectorized, no per-layer work) and shared by
every layer:
  - new K/V are written into their pool slots (`write_blocks`, `write_slots`),
  - sequences are grouped by context length (`AttnGroup`: sorted by context, a group's longest is
    at most GROUP_RATIO x its shortest, DECODE_GROUP_RATIO in decode-only steps), so padding each
    group to its longest wastes little,
  - decode groups (one query per sequence) never copy the context: scores and the weighted sum of
    V are each one embedding_bag straight over the pool (K is stored transposed per block, see
    pool.py), because on CPU copying the context is what a decode step spends its time on; except,
    without the native GEMV, small decode groups (GATHER_MAX_ROWS), which copy their whole blocks
    with one index_select and run two matmuls (docs/benchmarks.md, "decode bandwidth"),
  - prefill groups gather their context blocks into a reused `Workspace` (index_select into
    preallocated buffers: fresh multi-MB tensors per layer cost page faults) and run SDPA.
Block ids and slots follow pool.py's layout (the one place that defines it).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import native
from .pool import key_view, table_prefix, value_view
from .scores import PLAIN, Scores, softcapped
from .types import InvalidRequestError

GROUP_RATIO = 1.25  # a group's longest context <= GROUP_RATIO x its shortest (+ one block)
# Decode-only steps group coarser: a decode group reads only real blocks from memory (padding reads block 0,
# cached), so fewer, larger groups win until the padded work dwarfs the real one (docs/benchmarks.md).
DECODE_GROUP_RATIO = 4.0


@dataclass
class AttnGroup:
    """Sequences attended together, padded to the group's longest query chunk (Qm) and context (C)."""

    read_blocks: torch.Tensor  # [L, Bg * H * NB] int: context blocks, [seq][kv_head][token block] (padding -> 0)
    q_rows: torch.Tensor | None  # [Bg * Qm] long: flat token of each padded query row; None = all T in order
    keep: torch.Tensor | None  # [Tg] long: padded query rows that are real tokens; None = all
    out_rows: torch.Tensor | None  # [Tg] long: flat token of each kept row; None when q_rows is None
    mask: torch.Tensor | None  # prefill [Bg, 1, Qm, C] bool (True = attend); None when every key is visible
    bias: torch.Tensor | None  # decode [Bg, 1, NB * bs] float (0 = attend, -inf = not); None = all visible
    num_seqs: int  # Bg
    max_q: int  # Qm
    num_blocks: int  # NB: token blocks gathered per sequence
    ctx_len: int  # C: keys per sequence (<= NB * block_size)


@dataclass
class AttnContext:
    positions: torch.Tensor  # [T] long: position of each flat token in its sequence
    write_blocks: torch.Tensor  # [L, T * H] long: pool block of each new (token, kv head) per layer
    write_slots: torch.Tensor  # [T * H] long: its slot in that block
    last_rows: torch.Tensor  # [B] long: flat index of each sequence's last token
    groups: list[AttnGroup]
    block_size: int
    dims: torch.Tensor  # [hd] read_blocks' dtype: 0..hd-1 (K^T rows of a block)
    v_slots: torch.Tensor  # [bs] read_blocks' dtype: bs..2bs-1 (V rows of a block, after its K half)


class Workspace:
    """Grow-only flat gather buffers (K and V, or whole blocks), reused across layers and steps (one per thread)."""

    def __init__(self):
        self.k = self.v = self.b = torch.empty(0)

    def blocks(self, numel: int, like: torch.Tensor) -> torch.Tensor:
        """-> one flat buffer [numel] with pool `like`'s dtype and device (whole K+V blocks)."""
        self.b = _fit(self.b, numel, like)
        return self.b[:numel]

    def kv(self, numel: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> two flat buffers [numel] with pool `like`'s dtype and device."""
        self.k, self.v = _fit(self.k, numel, like), _fit(self.v, numel, like)
        return self.k[:numel], self.v[:numel]


def _fit(buf: torch.Tensor, numel: int, like: torch.Tensor) -> torch.Tensor:
    """`buf` if it holds numel of like's dtype and device, else a new one with 25% headroom."""
    if buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
        return like.new_empty(numel + numel // 4)
    return buf


def _tables(seqs, ntb: list[int], per_tb: int, num_blocks: int, seq_ids) -> torch.Tensor:
    """All block tables cut to their context, concatenated, then per_tb zeros (the padding target)."""
    flat = array("i")
    for i, ((_, _, table), n) in enumerate(zip(seqs, ntb)):
        flat.extend(table_prefix(table, n * per_tb, seq_ids[i], num_blocks))
    flat.frombytes(bytes(flat.itemsize * per_tb))  # the padding target: per_tb zeros
    tab = torch.frombuffer(flat, dtype=torch.int32).long()  # [sum(ntb) * L * H + L * H]
    bad = (tab < 0) | (tab >= num_blocks)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0]) // per_tb
        seq = int(torch.searchsorted(torch.tensor(ntb).cumsum(0), first, right=True))
        raise InvalidRequestError(f"seq {seq_ids[seq]}: block id out of range [0, {num_blocks})")
    return tab


def _partition(ends: list[int], bs: int, ratio: float) -> list[list[int]]:
    """Sequence indices grouped by context length (longest <= ratio x shortest + bs); flat order inside each."""
    groups: list[list[int]] = []
    for i in sorted(range(len(ends)), key=ends.__getitem__):
        if groups and ends[i] <= ratio * ends[groups[-1][0]] + bs:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [sorted(g) for g in groups]


def _causal_mask(qpos: torch.Tensor, C: int, window: int | None) -> torch.Tensor:
    """qpos [B, Qm] -> [B, 1, Qm, C] bool: key j visible to a query at p iff j <= p (and p - j < window)."""
    kpos = torch.arange(C)
    mask = kpos[None, None, :] <= qpos[:, :, None]
    if window is not None:
        mask &= (qpos[:, :, None] - kpos[None, None, :]) < window
    return mask[:, None]


@dataclass
class _Batch:
    """Per-sequence facts of one step as tensors [B] (build_context's scratch)."""

    starts: torch.Tensor
    lens: torch.Tensor
    ends: torch.Tensor
    ntb: torch.Tensor
    base: torch.Tensor  # offset of each sequence's table in the concatenated tables
    first_tok: torch.Tensor  # flat index of each sequence's first token


def _group(m: list[int], b: _Batch, tab: torch.Tensor, L: int, H: int, bs: int, window, idt) -> AttnGroup:
    idx = torch.tensor(m)
    Bg, lens, ends = len(m), b.lens[idx], b.ends[idx]
    Qm, C = int(lens.max()), int(ends.max())
    NB = -(-C // bs)
    lh = torch.arange(L * H)
    j = torch.arange(NB)  # token block
    at = torch.where(j < b.ntb[idx, None], b.base[idx, None] + j * (L * H), tab.numel() - L * H)  # [Bg, NB]
    read = tab[at[:, :, None] + lh].view(Bg, NB, L, H).permute(2, 0, 3, 1).reshape(L, -1).to(idt)  # [L, Bg*H*NB]
    offs = torch.arange(Qm)
    valid = offs < lens[:, None]  # [Bg, Qm]
    qpos = torch.where(valid, b.starts[idx, None] + offs, ends[:, None] - 1)  # [Bg, Qm]
    uniform = bool(valid.all())
    mask = bias = None
    if Qm > 1:
        mask = _causal_mask(qpos, C, window)
    elif not (bool((ends == NB * bs).all()) and window is None):
        seen = _causal_mask(qpos, NB * bs, window).view(Bg, 1, NB * bs)
        bias = torch.zeros(seen.shape).masked_fill_(~seen, float("-inf"))  # [Bg, 1, NB * bs]
    q_rows = keep = out_rows = None
    if not (uniform and m == list(range(b.lens.numel()))):
        q_rows = torch.where(valid, b.first_tok[idx, None] + offs, b.first_tok[idx, None]).reshape(-1)  # [Bg * Qm]
        keep = None if uniform else valid.reshape(-1).nonzero().squeeze(1)  # [Tg]
        out_rows = q_rows if keep is None else q_rows[keep]  # [Tg]
    return AttnGroup(read, q_rows, keep, out_rows, mask, bias, Bg, Qm, NB, C)


def build_context(
    seqs: list[tuple[int, int, list[int]]],
    num_layers: int,
    num_kv_heads: int,
    block_size: int,
    num_blocks: int,
    sliding_window: int | None = None,
    device: str | torch.device = "cpu",
    seq_ids: list[int] | None = None,
    head_dim: int = 1024,
) -> AttnContext:
    """seqs: (start_pos, n_tokens, block_table) per sequence, in flat-batch order (seq_ids name them in errors)."""
    L, H, bs = num_layers, num_kv_heads, block_size
    idt = torch.int32 if num_blocks * 2 * max(bs, head_dim) < 2**31 else torch.int64  # embedding_bag: int32 is fast
    if not seqs or min(n for _, n, _ in seqs) < 1:
        raise InvalidRequestError("a step needs at least one sequence, each with at least one token")
    ends = [s + n for s, n, _ in seqs]
    ntb = [-(-e // bs) for e in ends]
    tab = _tables(seqs, ntb, L * H, num_blocks, seq_ids or list(range(len(seqs))))
    lens = torch.tensor([n for _, n, _ in seqs])  # [B]
    ntb_t = torch.tensor(ntb)
    b = _Batch(torch.tensor([s for s, _, _ in seqs]), lens, torch.tensor(ends), ntb_t,
               (ntb_t.cumsum(0) - ntb_t) * (L * H), lens.cumsum(0) - lens)
    tok_seq = torch.repeat_interleave(torch.arange(len(seqs)), lens)  # [T]
    positions = b.starts[tok_seq] + torch.arange(tok_seq.numel()) - b.first_tok[tok_seq]  # [T]
    at = b.base[tok_seq] + (positions // bs) * (L * H)  # [T]: each token's block row in tab
    blocks = tab[at[:, None] + torch.arange(L * H)]  # [T, L * H]
    write_blocks = blocks.view(-1, L, H).permute(1, 0, 2).reshape(L, -1)  # [L, T * H]
    write_slots = (positions % bs).repeat_interleave(H)  # [T * H]
    ratio = DECODE_GROUP_RATIO if all(n == 1 for _, n, _ in seqs) else GROUP_RATIO
    groups = [_group(m, b, tab, L, H, bs, sliding_window, idt) for m in _partition(ends, bs, ratio)]
    to = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
    for g in groups:
        g.read_blocks, g.q_rows, g.keep, g.out_rows, g.mask, g.bias = map(
            to, (g.read_blocks, g.q_rows, g.keep, g.out_rows, g.mask, g.bias))
    return AttnContext(to(positions), to(write_blocks), to(write_slots), to(lens.cumsum(0) - 1), groups, bs,
                       to(torch.arange(head_dim, dtype=idt)), to(torch.arange(bs, 2 * bs, dtype=idt)))


def write_kv(pool: torch.Tensor, layer: int, k: torch.Tensor, v: torch.Tensor, ctx: AttnContext) -> None:
    """k, v [T, H, hd] -> their pool slots (in place; K transposed, see pool.py)."""
    blocks, slots, hd = ctx.write_blocks[layer], ctx.write_slots, k.shape[-1]  # [T * H] each
    key_view(pool)[blocks, :, slots] = k.reshape(-1, hd)  # K^T[block, :, slot]
    value_view(pool)[blocks, slots] = v.reshape(-1, hd)


# Decode groups of at most this many (sequence, query head) rows use _decode_gathered. Only without the
# native GEMV: next to MKL's matmuls small multi-threaded bags cost 1.5x per batch-1 step, next to the
# native kernel they beat the gather by a few % (docs/benchmarks.md, decode bandwidth).
GATHER_MAX_ROWS = 0 if native.gemv() is not None else 64


def _attend_decode(q: torch.Tensor, pool: torch.Tensor, layer: int, g: AttnGroup, ctx: AttnContext,
                   ws: Workspace, sc: Scores = PLAIN) -> torch.Tensor:
    """q [Bg, Hq, hd] (one query per sequence) -> [Bg, Hq * hd]."""
    if q.shape[0] * q.shape[1] <= GATHER_MAX_ROWS:
        return _decode_gathered(q, pool, layer, g, ws, sc)
    return _decode_bags(q, pool, layer, g, ctx, sc)


def _decode_gathered(q: torch.Tensor, pool: torch.Tensor, layer: int, g: AttnGroup, ws: Workspace,
                     sc: Scores = PLAIN) -> torch.Tensor:
    """Small groups: copy the context's whole blocks (K^T and V halves, one index_select), then matmuls.
    Next to MKL's matmuls, multi-threaded bags slowed the matmuls after them by 25-35% and
    single-threaded ones read the cold blocks slowly (docs/benchmarks.md)."""
    ids = g.read_blocks[layer]  # [Bg * H * NB]
    (Bg, Hq, hd), NB, bs = q.shape, g.num_blocks, pool.shape[2]
    H = ids.numel() // (Bg * NB)
    G = Hq // H
    kv = ws.blocks(ids.numel() * 2 * bs * hd, pool).view(-1, 2, bs, hd)
    torch.index_select(pool, 0, ids, out=kv)  # [Bg * H * NB, 2, bs, hd]: K^T half, V half (pool.py)
    kt = kv[:, 0].view(Bg * H, NB, hd, bs)  # [Bg * H, NB, hd, bs]
    s = torch.matmul((q * sc.factor(hd)).view(Bg * H, 1, G, hd), kt)  # [Bg * H, NB, G, bs]
    s = sc.cap(s.transpose(1, 2).reshape(Bg, Hq, NB * bs))  # [Bg, Hq, NB * bs]
    p = torch.softmax(s if g.bias is None else s + g.bias.to(s.dtype), dim=-1)  # [Bg, Hq, NB * bs]
    pv = p.view(Bg * H, G, NB, bs).transpose(1, 2)  # [Bg * H, NB, G, bs]
    o = torch.matmul(pv, kv[:, 1].view(Bg * H, NB, bs, hd))  # [Bg * H, NB, G, hd]: per-block partial sums
    return o.sum(1).view(Bg, Hq * hd)


def _decode_bags(q: torch.Tensor, pool: torch.Tensor, layer: int, g: AttnGroup, ctx: AttnContext,
                 sc: Scores = PLAIN) -> torch.Tensor:
    (Bg, Hq, hd), NB, bs = q.shape, g.num_blocks, pool.shape[2]
    ids = g.read_blocks[layer].view(Bg, -1, 1, NB, 1)  # [Bg, H, 1, NB, 1]
    H = ids.shape[1]
    G = Hq // H
    ids = ids.expand(Bg, H, G, NB, 1)  # [Bg, H, G, NB, 1]
    # scores: one bag per (seq, q head, block) = its K^T rows (hd x bs) weighted by the query
    k_rows = ids * (2 * hd) + ctx.dims[:hd]  # [Bg, H, G, NB, hd]
    w = (q * sc.factor(hd)).view(Bg, H, G, 1, hd).expand(Bg, H, G, NB, hd)  # [Bg, H, G, NB, hd]
    s = F.embedding_bag(k_rows.reshape(-1, hd), pool.view(-1, bs), per_sample_weights=w.reshape(-1, hd),
                        mode="sum").view(Bg, Hq, NB * bs)  # [Bg, Hq, NB * bs]
    s = sc.cap(s)
    p = torch.softmax(s if g.bias is None else s + g.bias.to(s.dtype), dim=-1)  # [Bg, Hq, NB * bs]
    # output: one bag per (seq, q head) = its context's V rows weighted by p
    v_rows = ids * (2 * bs) + ctx.v_slots  # [Bg, H, G, NB, bs]
    o = F.embedding_bag(v_rows.reshape(Bg * Hq, -1), pool.view(-1, hd), per_sample_weights=p.view(Bg * Hq, -1),
                        mode="sum")  # [Bg * Hq, hd]
    return o.view(Bg, Hq * hd)


def _attend_gather(q: torch.Tensor, pool: torch.Tensor, layer: int, g: AttnGroup, ws: Workspace,
                   sc: Scores = PLAIN) -> torch.Tensor:
    """q [Bg * Qm, Hq, hd] -> [Bg * Qm, Hq * hd] over the group's contexts gathered into ws."""
    ids = g.read_blocks[layer]  # [Bg * H * NB]
    (_, Hq, hd), bs = q.shape, pool.shape[2]
    kb, vb = ws.kv(ids.numel() * bs * hd, pool)
    torch.index_select(key_view(pool), 0, ids, out=kb.view(-1, hd, bs))
    torch.index_select(value_view(pool), 0, ids, out=vb.view(-1, bs, hd))
    Bg, Qm, NB = g.num_seqs, g.max_q, g.num_blocks
    kc = kb.view(Bg, -1, NB, hd, bs).transpose(-1, -2).reshape(Bg, -1, NB * bs, hd)[:, :, : g.ctx_len]  # [Bg, H, C, hd]
    vc = vb.view(Bg, -1, NB * bs, hd)[:, :, : g.ctx_len]  # [Bg, H, C, hd]
    qp = q.view(Bg, Qm, Hq, hd).transpose(1, 2)  # [Bg, Hq, Qm, hd]
    if sc.softcap:
        o = softcapped(qp, kc, vc, g.mask, sc)
    else:
        o = F.scaled_dot_product_attention(qp, kc, vc, attn_mask=g.mask, enable_gqa=Hq != kc.shape[1], scale=sc.scale)
    return o.transpose(1, 2).reshape(Bg * Qm, Hq * hd)


def _attend(q: torch.Tensor, pool: torch.Tensor, layer: int, g: AttnGroup, ctx: AttnContext, ws: Workspace,
            sc: Scores = PLAIN):
    if g.max_q == 1:
        return _attend_decode(q, pool, layer, g, ctx, ws, sc)
    return _attend_gather(q, pool, layer, g, ws, sc)


def paged_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pool: torch.Tensor, layer: int, ctx: AttnContext,
    ws: Workspace, scale: float | None = None, softcap: float | None = None,
) -> torch.Tensor:
    """q [T, Hq, hd], k/v [T, H, hd] (new tokens, RoPE applied) -> attention output [T, Hq * hd].
    Scores are q.k x `scale` (None: hd ** -0.5), soft-capped by `softcap` where given."""
    write_kv(pool, layer, k, v, ctx)
    sc = PLAIN if scale is None and not softcap else Scores(scale, softcap)
    if len(ctx.groups) == 1 and ctx.groups[0].q_rows is None:
        return _attend(q, pool, layer, ctx.groups[0], ctx, ws, sc)
    T, Hq, hd = q.shape
    out = q.new_empty(T, Hq * hd)
    for g in ctx.groups:
        o = _attend(q if g.q_rows is None else q[g.q_rows], pool, layer, g, ctx, ws, sc)  # [Bg * Qm, Hq * hd]
        out.index_copy_(0, g.out_rows, o if g.keep is None else o[g.keep])
    return out
