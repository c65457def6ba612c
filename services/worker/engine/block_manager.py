"""Per-LLM views over a unit's head-wise blocks, with quotas.

Where blocks come from (`BlockManager(source, ...)`):
- one BlockSource shared by all LLMs (a local pool, `pool.LocalBlockSource`): quotas are split here,
  in proportion to rate x blocks per token block (`proportional_quotas`);
- or `BlockSources` (one BlockSource per LLM, e.g. leases from memmgr, services/worker/kv.py):
  `open(llm)` when the LLM is added, `close(llm)` once it is removed holding no block. Quotas then come
  from outside (`set_quotas`, from memmgr's ADBS), and a lone sequence cannot exceed its quota
  (memmgr enforces it at lease time).
A sequence's block table grows one token block at a time; a token block of an LLM costs
`layers x kv_heads` head-wise blocks, appended in pool.py's [token_block][layer][kv_head] order.
`can_append` / `append` are the paired check-and-commit: `append` returns False and takes nothing
when the blocks do not fit (the source is shared, so another LLM may win the race in between).
Quotas are soft for an LLM's only sequence (see `BlockManager.over_quota`), so a lone sequence
never starves behind a small quota.
"""

from __future__ import annotations

from array import array

from typing import Protocol

from services.worker.engine import pool
from services.worker.engine.sequence import Sequence
from services.worker.engine.types import BlockSource


class BlockSources(Protocol):
    """One BlockSource per LLM: opened when the LLM is added, closed after it is removed."""

    def open(self, llm: str) -> BlockSource:
        ...

    def close(self, llm: str) -> None:
        ...


class LLMBlocks:
    """One LLM's view: how many head-wise blocks its sequences hold, against its quota."""

    def __init__(self, source: BlockSource, block_size: int, num_layers: int, num_kv_heads: int,
                 quota: int):
        self.source = source
        self.block_size = block_size
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.quota = quota
        self.used = 0

    @property
    def per_token_block(self) -> int:
        return pool.blocks_per_token_block(self.num_layers, self.num_kv_heads)

    def blocks_for(self, n_tokens: int) -> int:
        return pool.blocks_for_tokens(n_tokens, self.block_size, self.num_layers, self.num_kv_heads)

    def needed(self, seq: Sequence, n_new: int) -> int:
        """Extra head-wise blocks for seq to hold its computed tokens plus n_new more."""
        tokens, bs = seq.num_computed_tokens + n_new, self.block_size  # blocks_for, inlined (hot path)
        need = -(-tokens // bs) * self.num_layers * self.num_kv_heads - len(seq.block_table)
        return need if need > 0 else 0

    @property
    def refilling(self) -> bool:
        """The source is short locally and more blocks are on the way (memmgr leases): wait, do not preempt."""
        return bool(getattr(self.source, "refilling", False))

    def can_append(self, seq: Sequence, n_new: int, ignore_quota: bool = False) -> bool:
        need = self.needed(seq, n_new)
        if need == 0:
            return True
        if not ignore_quota and self.used + need > self.quota:
            return False
        can = getattr(self.source, "can_acquire", None)
        return can(need) if can else True

    def append(self, seq: Sequence, n_new: int, ignore_quota: bool = False) -> bool:
        """Grow seq's table to cover n_new more tokens; False (nothing taken) when it does not fit."""
        need = self.needed(seq, n_new)
        if need == 0:
            return True
        if not ignore_quota and self.used + need > self.quota:
            return False
        ids = self.source.acquire(need)
        if ids is None:
            return False
        seq.block_table.extend(ids)
        self.used += need
        return True

    def free(self, seq: Sequence) -> None:
        """Return all of seq's blocks (finish, abort, preempt)."""
        if seq.block_table:
            self.source.release(seq.block_table.tolist())
            self.used -= len(seq.block_table)
            seq.block_table = array("i")


class BlockManager:
    """All LLMs of a unit: their sources, quotas, usage and the integrity check."""

    def __init__(self, source: BlockSource | BlockSources, capacity: int, block_size: int):
        self.shared = hasattr(source, "acquire")  # one source for all LLMs (else one per LLM)
        self.source = source
        self.capacity = capacity
        self.block_size = block_size
        self.llms: dict[str, LLMBlocks] = {}
        self.wake = None  # called when a source's refill arrives (sources with `on_refill`)

    def _hook(self, src):
        if hasattr(src, "on_refill"):
            src.on_refill = self.wake
        return src

    def add_llm(self, name: str, num_layers: int, num_kv_heads: int, quota: int | None = None) -> LLMBlocks:
        src = self._hook(self.source if self.shared else self.source.open(name))
        view = LLMBlocks(src, self.block_size, num_layers, num_kv_heads,
                         self.capacity if quota is None else quota)
        self.llms[name] = view
        return view

    def remove_llm(self, name: str) -> None:
        """Drop an LLM holding no block (RuntimeError otherwise); a per-LLM source is closed."""
        view = self.llms[name]
        if view.used:
            raise RuntimeError(f"LLM {name!r} still holds {view.used} blocks")
        del self.llms[name]
        if not self.shared:
            self.source.close(name)

    def replace_source(self, name: str, source: BlockSource) -> None:
        """Give an LLM holding no block a new per-LLM source (e.g. after a new memmgr session)."""
        view = self.llms[name]
        if self.shared or view.used:
            raise RuntimeError(f"cannot replace the source of {name!r} (shared source, or {view.used} blocks held)")
        view.source = self._hook(source)

    def __getitem__(self, name: str) -> LLMBlocks:
        return self.llms[name]

    @property
    def quotas(self) -> dict[str, int]:
        return {n: v.quota for n, v in self.llms.items()}

    @property
    def usage(self) -> dict[str, int]:
        return {n: v.used for n, v in self.llms.items()}

    @property
    def num_free(self) -> int:
        """Blocks not held by this unit's sequences (a shared source's own count when it has one)."""
        free = getattr(self.source, "num_free", None) if self.shared else None
        return free if free is not None else self.capacity - sum(self.usage.values())

    def set_quotas(self, quotas: dict[str, int]) -> None:
        """Set the quota (head-wise blocks) of the named LLMs; others keep theirs."""
        for name, q in quotas.items():
            if name not in self.llms:
                raise KeyError(f"unknown LLM {name!r}")
            if q < 0:
                raise ValueError(f"quota of {name!r} must be >= 0, got {q}")
            self.llms[name].quota = int(q)

    def proportional_quotas(self, rates: dict[str, float]) -> dict[str, int]:
        """Split capacity in proportion to rate x blocks_per_token (all equal when all rates are 0)."""
        weights = {n: max(rates.get(n, 0.0), 0.0) * v.per_token_block for n, v in self.llms.items()}
        total = sum(weights.values())
        if total <= 0:
            weights = {n: 1.0 for n in self.llms}
            total = float(len(weights))
        return {n: int(self.capacity * w / total) for n, w in weights.items()}

    def check_integrity(self, seqs: list[Sequence]) -> None:
        """AssertionError unless per-LLM usage matches the tables and no block has two owners."""
        owned: dict[str, int] = {n: 0 for n in self.llms}
        seen: set[int] = set()
        for s in seqs:
            assert not (seen & set(s.block_table)), f"seq {s.seq_id} shares a block with another"
            seen.update(s.block_table)
            owned[s.llm] = owned.get(s.llm, 0) + len(s.block_table)
        for n, v in self.llms.items():
            assert owned[n] == v.used, f"{n}: tables hold {owned[n]} blocks, usage says {v.used}"
            held = None if self.shared else getattr(v.source, "num_held", None)
            assert held is None or held == v.used, f"{n}: its source lent {held} blocks, usage says {v.used}"
        sources = [self.source] if self.shared else [v.source for v in self.llms.values()]
        for src in sources:
            check = getattr(src, "check_integrity", None)
            if check:
                check()
