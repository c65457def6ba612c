"""Fused CPU decode steps: every layer of a decode-only batch in ONE native call (csrc/decode.c).

A decode step of a few sequences on the CPU is bound by reading the weights; on the torch path each
layer also dispatches ~40 small ops (norms, RoPE, K/V writes, attention, residuals), a quarter of a
batch-1 step (docs/benchmarks.md). `FusedLayers` runs the same math for a batch of sequences of one new
token each in one OpenMP region: all layers, the final norm and (stored as column panels) the LM head
(docs/benchmarks.md). It exists only where it can run: CPU, fp32, every layer matrix in column panels of a
width the library in use takes (panels.py, native.Kernels.widths), the native library built (native.py);
`build` returns None otherwise and the model stays on the torch path. model.Transformer also drops it where
the calibration (calibrate.prefer_fused) measured the torch step faster. Steps with a prefill chunk always take the torch path
(model.Transformer.forward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import native
from .loader import ModelSpec
from .pool import table_prefix
from .types import InvalidRequestError

WEIGHTS = ("attn_norm", "wqkv", "bqkv", "wo", "ffn_norm", "w13", "w2")  # csrc/decode.c: per layer, this order
MATRICES = ("wqkv", "wo", "w13", "w2")


def _takes(m: torch.Tensor, widths: tuple[int, ...]) -> bool:
    """Column panels of a width the library takes (native.Kernels.widths)."""
    return m.dim() == 3 and m.dtype == torch.float32 and m.is_contiguous() and m.shape[2] in widths


class FusedLayers:
    """One model's layers, final norm and LM head over its pool: `fused(tokens, positions, tables) -> logits`."""

    def __init__(self, spec: ModelSpec, layers: list, pool: torch.Tensor, embed: torch.Tensor, norm: torch.Tensor,
                 lm_head: torch.Tensor | None, inv_freq: torch.Tensor, kernels: native.Kernels):
        s, first = spec, layers[0]
        self.lm_head = lm_head if lm_head is not None and _takes(lm_head, kernels.widths) else None  # in the kernel, else:
        self.head = lm_head  # untied [D, V] (no panel width divides V): x @ head; None (tied): F.linear(x, embed)
        widths = [getattr(first, n).shape[2] for n in MATRICES]
        self.dims = torch.tensor([s.num_layers, s.hidden_size, s.num_heads, s.num_kv_heads, s.head_dim,
                                  s.intermediate_size, pool.shape[2], s.sliding_window or 0, *widths, s.vocab_size,
                                  0 if self.lm_head is None else self.lm_head.shape[2], pool.shape[0]])
        self.inv_freq = inv_freq.float().contiguous()
        self.tensors = [getattr(layer, n) for layer in layers for n in WEIGHTS] + [norm, self.lm_head, self.inv_freq]
        self.addresses = torch.tensor([0 if t is None else t.data_ptr() for t in self.tensors])  # int64
        self.spec, self.pool, self.embed = spec, pool, embed
        self.kernel, self.bad_row = kernels.decode
        self.isa = kernels.isa

    @property
    def key(self) -> str:
        """The shapes of this model's fused step (calibration cache key; the pool's size left out)."""
        return "x".join(map(str, self.dims.tolist()[:-1])) + f"-{self.isa}-{'head' if self.lm_head is not None else 'nohead'}"

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
        """tokens, positions [M] int64, tables [M, S] int32 from `tables` (trusted) ->
        logits [M, V] (fp32); writes each row's K/V at its position into the pool."""
        M = tokens.shape[0]
        x = F.embedding(tokens, self.embed)  # [M, D], a fresh tensor: the kernel updates it in place
        logits = x.new_empty(M, self.spec.vocab_size) if self.lm_head is not None else None
        rc = self.kernel(x.data_ptr(), M, self.dims.data_ptr(), self.spec.rms_norm_eps, self.addresses.data_ptr(),
                         self.pool.data_ptr(), tables.data_ptr(), tables.shape[1], positions.data_ptr(),
                         None if logits is None else logits.data_ptr(), torch.get_num_threads())
        if rc != 0:
            raise (MemoryError if rc == -2 else ValueError)(f"decode_layers: {M} rows, dims {self.dims.tolist()}: "
                                                            f"returned {rc}")
        if logits is not None:
            return logits
        return F.linear(x, self.embed) if self.head is None else x @ self.head  # x: after the final norm

    def tables(self, positions: torch.Tensor, block_tables: list, seq_ids: list[int]) -> torch.Tensor:
        """positions [M] int64 of the new tokens, their sequences' block tables (lists or array("i")) -> tables
        [M, S] int32, each cut to the blocks up to its position (pool.py's index order), zero-padded. Raises
        InvalidRequestError, naming the sequence, for a table too short for its context or with a block id
        outside the pool (the kernel trusts them)."""
        L, H, bs, nb = self.spec.num_layers, self.spec.num_kv_heads, self.pool.shape[2], self.pool.shape[0]
        need = [(pos // bs + 1) * L * H for pos in positions.tolist()]
        out = torch.zeros(len(need), max(need), dtype=torch.int32)
        for i, (table, n) in enumerate(zip(block_tables, need)):
            out[i, :n] = torch.frombuffer(table_prefix(table, n, seq_ids[i], nb), dtype=torch.int32)
        bad = self.bad_row(self.dims.data_ptr(), out.data_ptr(), len(need), out.shape[1], positions.data_ptr())
        if bad >= 0:
            raise InvalidRequestError(f"seq {seq_ids[bad]}: block id out of range [0, {nb})")
        return out


def build(spec: ModelSpec, layers: list, pool: torch.Tensor, embed: torch.Tensor, norm: torch.Tensor,
          lm_head: torch.Tensor | None, inv_freq: torch.Tensor) -> FusedLayers | None:
    """FusedLayers for these weights and pool, or None where the kernel cannot run them (module docstring).
    lm_head None: tied to embed [V, D]."""
    kernels = native.kernels()
    if kernels is None or pool.device.type != "cpu" or pool.dtype != torch.float32 or not pool.is_contiguous():
        return None
    if not all(_takes(getattr(layer, n), kernels.widths) for layer in layers for n in MATRICES):
        return None
    if any(len({getattr(layer, n).shape for layer in layers}) != 1 for n in MATRICES):
        return None
    if spec.num_heads % spec.num_kv_heads or embed.dtype != torch.float32:
        return None
    return FusedLayers(spec, layers, pool, embed, norm, lm_head, inv_freq, kernels)
