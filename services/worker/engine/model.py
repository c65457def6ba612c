"""Decoder-only transformer (Llama / Mistral / Qwen2) over the head-wise paged KV pool.

gpt-fast style, functional: `Transformer(spec, weights, pool)` keeps references to the given
tensors (no copy, so processes can share one set of weights) and runs a FLAT batch of tokens
described by an attention.AttnContext. RMSNorm, RoPE (default / linear / llama3), grouped-query
attention, SwiGLU MLP, tied or untied embeddings.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import calibrate
from . import fused as fused_layers
from . import native
from .attention import AttnContext, Workspace, build_context, paged_attention
from .loader import ModelSpec


def inv_frequencies(spec: ModelSpec) -> torch.Tensor:
    """RoPE inverse frequencies [hd / 2] (fp32), matching transformers' rope init functions."""
    hd = spec.head_dim
    inv = 1.0 / (spec.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    cfg = dict(spec.rope_scaling)
    if spec.rope_type == "linear":
        return inv / cfg["factor"]
    if spec.rope_type == "llama3":
        return _llama3(inv, cfg)
    return inv


def _llama3(inv: torch.Tensor, cfg: dict) -> torch.Tensor:
    factor, lo, hi = cfg["factor"], cfg["low_freq_factor"], cfg["high_freq_factor"]
    old_len = cfg["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old_len / lo, inv / factor, inv)
    smooth = (old_len / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / hi) & ~(wavelen > old_len / lo)
    return torch.where(medium, smoothed, scaled)


def rope_cos_sin(inv: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """positions [T] -> cos, sin [T, 1, hd] (broadcast over heads)."""
    freqs = positions.float()[:, None] * inv[None, :]  # [T, hd / 2]
    emb = torch.cat([freqs, freqs], dim=-1)[:, None, :]  # [T, 1, hd]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, hd] rotated by the half-split convention of HF Llama."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


SPLIT_MAX_ROWS = 256  # linear(): up to this many rows, split the weight over the threads


def linear(x: torch.Tensor, wt: torch.Tensor, b: torch.Tensor | None = None,
           plan: calibrate.Plan | None = None) -> torch.Tensor:
    """x [M, K] @ wt (+ b [N]) -> [M, N]; wt is [K, N] or column panels [P, K, wp] (panels.py).

    Panels (CPU fp32, only where the native library runs, see loader.py): native.gemv, which streams each
    panel once per register tile of rows (from L2 after the first), where `plan` (calibrate.py: measured on
    this machine) says it beats a bmm over the panels for M rows, or always without a plan; without the
    kernel (e.g. bf16) one bmm over the panels. [K, N]: matrix_product.
    """
    y = _panels(x, wt, plan) if wt.dim() == 3 else matrix_product(x, wt)
    return y if b is None else y + b


def _panels(x: torch.Tensor, wp: torch.Tensor, plan: calibrate.Plan | None) -> torch.Tensor:
    M = x.shape[0]
    if GEMV is not None and x.dtype == torch.float32 and (plan is None or plan.uses_native(M)):
        return GEMV(x.contiguous(), wp)  # [M, P * w]
    return bmm_over_panels(x, wp)


def bmm_over_panels(x: torch.Tensor, wp: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ panels [P, K, w] -> [M, P * w] in one bmm (torch only)."""
    (P, K, w), M = wp.shape, x.shape[0]
    y = torch.bmm(x.expand(P, M, K), wp)  # [P, M, w]
    return y.view(1, P * w) if M == 1 else y.transpose(0, 1).reshape(M, P * w)


def matrix_product(x: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ wt [K, N] -> [M, N] on torch's matmuls. On CPU with S > 1 threads and few rows, MKL reads
    the weight at about one core's bandwidth, while decode is bandwidth-bound, so a bmm with one batch per
    thread reads it on all cores: one row splits K (the S partial sums are added), a few rows split N."""
    S, (M, K), N = torch.get_num_threads(), x.shape, wt.shape[1]
    if S == 1 or M > SPLIT_MAX_ROWS or x.device.type != "cpu":
        return x @ wt  # [M, N]
    if M == 1 and K % S == 0:
        return torch.bmm(x.view(S, 1, K // S), wt.view(S, K // S, N)).sum(0)  # [S, 1, N] -> [1, N]
    if N % S == 0:
        y = torch.bmm(x.expand(S, M, K), wt.view(K, S, N // S).transpose(0, 1))  # [S, M, N / S]
        return y.transpose(0, 1).reshape(M, N)  # [M, N]
    return x @ wt


GEMV = native.gemv()  # None where the native kernel cannot run: _panels uses bmm then
FUSED = True  # decode-only steps through fused.FusedLayers where it runs and calibration prefers it (benchmarks switch it off)


@dataclass
class Layer:
    """One decoder layer's weights; matrices are [in, out] (x @ w) or column panels (panels.py)."""

    attn_norm: torch.Tensor  # [D]
    wqkv: torch.Tensor  # [D, (Hq + 2 H) * hd] or its panels
    bqkv: torch.Tensor | None  # [(Hq + 2 H) * hd]
    wo: torch.Tensor  # [Hq * hd, D]
    ffn_norm: torch.Tensor  # [D]
    w13: torch.Tensor  # [D, 2 I]
    w2: torch.Tensor  # [I, D]


class Transformer:
    """The model over its weights and pool. Products with panel matrices follow `calibration`'s plans
    (calibrate.py; default: the process's); decode-only steps go through fused.FusedLayers where it runs and,
    unless calibrate_fused=False, where the calibration measured it faster than the torch step at the torch
    thread count the step runs with (`fused`: a job's dispatches may get different numbers of cores)."""

    def __init__(self, spec: ModelSpec, weights: dict[str, torch.Tensor], pool: torch.Tensor,
                 calibration: calibrate.Calibration | None = None, calibrate_fused: bool = True):
        if pool.shape[-1] != spec.head_dim or pool.dtype != spec.dtype:
            raise ValueError(f"pool (head_dim {pool.shape[-1]}, {pool.dtype}) does not fit {spec.name} "
                             f"(head_dim {spec.head_dim}, {spec.dtype})")
        self.spec, self.pool = spec, pool
        self.embed, self.norm = weights["embed"], weights["norm"]  # [V, D], [D]
        self.tied = "lm_head" not in weights
        self.lm_head = weights.get("lm_head", self.embed)  # [D, V] or panels; tied: the embedding itself [V, D]
        self.layers = [
            Layer(*(weights.get(f"layers.{i}.{n}") for n in ("attn_norm", "wqkv", "bqkv", "wo", "ffn_norm", "w13", "w2")))
            for i in range(spec.num_layers)
        ]
        self.inv_freq = inv_frequencies(spec).to(pool.device)
        s = spec
        self.qk_v_split = [(s.num_heads + s.num_kv_heads) * s.head_dim, s.num_kv_heads * s.head_dim]
        self._local = threading.local()  # a Workspace per thread: prefill and decode jobs may share a model
        self.calibration = calibration or calibrate.default()
        self.plans = {(m.shape[1], m.shape[0] * m.shape[2]): self.calibration.plan(m.shape[1], m.shape[0] * m.shape[2])
                      for m in weights.values() if m.dim() == 3}  # (K, N) -> Plan of every panel matrix
        self._weights, self._calibrate_fused = weights, calibrate_fused
        self._fused = fused_layers.build(spec, self.layers, pool, self.embed, self.norm,
                                         None if self.tied else self.lm_head, self.inv_freq)  # None: cannot run
        self._fused_at: dict[int, bool] = {}  # torch thread count -> the calibration prefers the fused step
        self._fused_lock = threading.Lock()
        _ = self.fused  # decided now for this thread count, not in the first step

    @property
    def fused(self) -> fused_layers.FusedLayers | None:
        """The fused decode step for a step run now, or None (the torch path): decided once per torch thread
        count (calibrate.prefer_fused, cached on disk per count), since a job that started on one core may
        later run a dispatch on several, where the other path may win."""
        if self._fused is None or not self._calibrate_fused:
            return self._fused
        threads = torch.get_num_threads()
        wins = self._fused_at.get(threads)  # every step asks: no lock once the count is decided
        if wins is None:
            with self._fused_lock:
                if threads not in self._fused_at:
                    w = self._weights
                    self._fused_at[threads] = self.calibration.prefer_fused(
                        self._fused.key, lambda rows: self._scratch_step(w, rows, True),
                        lambda rows: self._scratch_step(w, rows, False))
                wins = self._fused_at[threads]
        return self._fused if wins else None

    def _scratch_step(self, weights: dict[str, torch.Tensor], rows: int, fused: bool):
        """A decode step of `rows` sequences at the last position of calibrate.FUSED_CONTEXT_BLOCKS token blocks,
        all over the same blocks of a scratch pool (the real pool is never written; the rows' K/V writes
        collide, harmless for timing), fused or on the torch path, as a callable of no arguments."""
        s, bs, nb = self.spec, self.pool.shape[2], calibrate.FUSED_CONTEXT_BLOCKS
        blocks = nb * s.num_layers * s.num_kv_heads
        pool = self.pool.new_zeros(blocks, *self.pool.shape[1:])  # [nb * L * H, 2, bs, hd]
        pos = min(nb * bs, s.max_model_len) - 1
        tables, ids = [list(range(blocks))] * rows, list(range(rows))
        tokens, positions = torch.arange(rows) % s.vocab_size, torch.full((rows,), pos)  # [rows] each
        if fused:
            f = fused_layers.build(s, self.layers, pool, self.embed, self.norm, None if self.tied else self.lm_head,
                                   self.inv_freq)
            t = f.tables(positions, tables, ids)
            return lambda: _inference(f, tokens, positions, t)
        m = Transformer(s, weights, pool, self.calibration, calibrate_fused=False)
        ctx = build_context([(pos, 1, t) for t in tables], s.num_layers, s.num_kv_heads, bs, blocks,
                            s.sliding_window, "cpu", ids, s.head_dim)
        return lambda: _inference(m.forward, tokens, ctx)

    @property
    def workspace(self) -> Workspace:
        ws = getattr(self._local, "ws", None)
        if ws is None:
            ws = self._local.ws = Workspace()
        return ws

    def _norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, w.shape, w, self.spec.rms_norm_eps)

    def _layer(self, i: int, x: torch.Tensor, cos, sin, ctx: AttnContext, ws: Workspace) -> torch.Tensor:
        """x [T, D] -> [T, D]."""
        w, s, T, linear = self.layers[i], self.spec, x.shape[0], self._linear
        qkv = linear(self._norm(x, w.attn_norm), w.wqkv, w.bqkv)  # [T, (Hq + 2 H) * hd]
        qk, v = qkv.split(self.qk_v_split, dim=-1)
        qk = apply_rope(qk.view(T, s.num_heads + s.num_kv_heads, s.head_dim), cos, sin)  # [T, Hq + H, hd]
        q, k = qk.split([s.num_heads, s.num_kv_heads], dim=1)  # [T, Hq, hd], [T, H, hd]
        attn = paged_attention(q, k, v.view(T, s.num_kv_heads, s.head_dim), self.pool, i, ctx, ws)
        x = x + linear(attn, w.wo)  # [T, D]
        gate, up = linear(self._norm(x, w.ffn_norm), w.w13).chunk(2, dim=-1)  # [T, I] each
        return x + linear(F.silu(gate) * up, w.w2)

    def forward(self, tokens: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        """tokens [T] -> logits [B, V] (fp32) at each sequence's last token; writes K/V into the pool."""
        x = F.embedding(tokens, self.embed)  # [T, D]
        cos, sin = rope_cos_sin(self.inv_freq, ctx.positions, x.dtype)
        ws = self.workspace
        for i in range(len(self.layers)):
            x = self._layer(i, x, cos, sin, ctx, ws)
        return self._logits(x[ctx.last_rows])

    def _linear(self, x: torch.Tensor, wt: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        """linear() with the matrix's calibration plan."""
        plan = self.plans.get((wt.shape[1], wt.shape[0] * wt.shape[2])) if wt.dim() == 3 else None
        return linear(x, wt, b, plan)

    def can_fuse(self) -> bool:
        """Whether decode-only steps can run through self.fused (fused.FusedLayers)."""
        return FUSED and self.fused is not None

    def _logits(self, last: torch.Tensor) -> torch.Tensor:
        """last [B, D] hidden states -> logits [B, V] (fp32)."""
        last = self._norm(last, self.norm)
        logits = F.linear(last, self.embed) if self.tied else self._linear(last, self.lm_head)  # [B, V]
        return logits.float()


@torch.inference_mode()
def _inference(fn, *args):
    return fn(*args)
