"""Fused CPU decode steps: every layer of a decode-only batch in ONE native call (csrc/decode.c).

A decode step of a few sequences on the CPU is bound by reading the weights; on the torch path each
layer also dispatches ~40 small ops (norms, RoPE, K/V writes, attention, residuals), a quarter of a
batch-1 step (docs/benchmarks.md). `FusedLayers` runs the same math for up to native.MAX_ROWS sequences
of one new token each in one OpenMP region. It exists only where it can run: CPU, fp32, every layer
matrix in column panels of a width the kernel takes (panels.py), the native library built (native.py);
`build` returns None otherwise and the model stays on the torch path. Prefill and larger batches always
take the torch path (model.Transformer.forward).
"""

from __future__ import annotations

from array import array

import torch

from . import native
from .loader import ModelSpec
from .types import InvalidRequestError

WEIGHTS = ("attn_norm", "wqkv", "bqkv", "wo", "ffn_norm", "w13", "w2")  # csrc/decode.c NWEIGHTS order


class FusedLayers:
    """All decoder layers of one model over its pool, as `fused(x, positions, tables, cos, sin)` (x in place)."""

    def __init__(self, spec: ModelSpec, layers: list, pool: torch.Tensor, kernel):
        s = spec
        widths = [layers[0].wqkv.shape[2], layers[0].wo.shape[2], layers[0].w13.shape[2], layers[0].w2.shape[2]]
        self.dims = torch.tensor([s.num_layers, s.hidden_size, s.num_heads, s.num_kv_heads, s.head_dim,
                                  s.intermediate_size, pool.shape[2], s.sliding_window or 0, *widths])
        self.weights = [getattr(layer, n) for layer in layers for n in WEIGHTS]  # keeps them alive
        self.addresses = torch.tensor([0 if t is None else t.data_ptr() for t in self.weights])  # [L * 7] int64
        self.spec, self.pool, self.kernel = spec, pool, kernel

    def __call__(self, x: torch.Tensor, positions: torch.Tensor, tables: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor) -> torch.Tensor:
        """x [M, D] fp32 contiguous (overwritten), positions [M] int64, tables [M, S] int32 (decode_tables),
        cos / sin [M, hd] of those positions -> x after the last layer (before the final norm)."""
        M = x.shape[0]
        rc = self.kernel(x.data_ptr(), M, self.dims.data_ptr(), self.spec.rms_norm_eps, self.addresses.data_ptr(),
                         self.pool.data_ptr(), tables.data_ptr(), tables.shape[1], positions.data_ptr(),
                         cos.data_ptr(), sin.data_ptr(), torch.get_num_threads())
        if rc != 0:
            raise (MemoryError if rc == -2 else ValueError)(f"decode_layers: {M} rows, dims {self.dims.tolist()}: "
                                                            f"returned {rc}")
        return x


def build(spec: ModelSpec, layers: list, pool: torch.Tensor) -> FusedLayers | None:
    """FusedLayers for these weights and pool, or None where the kernel cannot run them (module docstring)."""
    kernel = native.decode_layers()
    mats = [getattr(layer, n) for layer in layers for n in ("wqkv", "wo", "w13", "w2")]
    if kernel is None or pool.device.type != "cpu" or pool.dtype != torch.float32 or not pool.is_contiguous():
        return None
    if not all(m.dim() == 3 and m.dtype == torch.float32 and m.is_contiguous() and 16 <= m.shape[2] <= 256
               and m.shape[2] % 16 == 0 for m in mats):
        return None
    shapes = {n: {getattr(layer, n).shape for layer in layers} for n in ("wqkv", "wo", "w13", "w2")}
    if any(len(v) != 1 for v in shapes.values()) or spec.num_heads % spec.num_kv_heads:
        return None
    return FusedLayers(spec, layers, pool, kernel)


def decode_tables(seqs: list[tuple[int, list[int]]], num_layers: int, num_kv_heads: int, block_size: int,
                  num_blocks: int, seq_ids: list[int]) -> torch.Tensor:
    """seqs: (position of the new token, block table) -> tables [M, S] int32, each cut to the blocks up to that
    position (pool.py's index order), zero-padded. Raises InvalidRequestError, naming the sequence, for a table
    too short for its context or with a block id outside [0, num_blocks) (the kernel trusts them)."""
    per_tb = num_layers * num_kv_heads
    need = [(pos // block_size + 1) * per_tb for pos, _ in seqs]
    out = torch.zeros(len(seqs), max(need), dtype=torch.int32)
    for i, ((pos, table), n) in enumerate(zip(seqs, need)):
        if len(table) < n:
            raise InvalidRequestError(f"seq {seq_ids[i]}: block table has {len(table)} ids, needs {n} for its context")
        try:
            row = torch.frombuffer(array("i", table[:n]), dtype=torch.int32)
        except OverflowError:
            row = None
        if row is None or int(row.min()) < 0 or int(row.max()) >= num_blocks:
            raise InvalidRequestError(f"seq {seq_ids[i]}: block id out of range [0, {num_blocks})")
        out[i, :n] = row
    return out
