"""The head-wise KV pool: THE one place that defines its layout and the block-table index order.

Pool tensor: `[num_blocks, 2, block_size, head_dim]` = (block id, K=0 / V=1, ...), contiguous.
One head-wise block holds K and V of ONE layer x ONE KV head x `block_size` tokens, so blocks are
interchangeable between LLMs whose head_dim and dtype match, whatever their layers and heads.
  - V half, `value_view(pool)[n]`: `[block_size, head_dim]` (slot, dim).
  - K half, `key_view(pool)[n]`: stored TRANSPOSED, `[head_dim, block_size]` (dim, slot): the
    `block_size * head_dim` values of `pool[n, 0]` are K^T. A decode query's scores over a block are
    then a weighted sum of the block's head_dim rows, which embedding_bag computes in place (no copy
    of K); attention.py relies on this.

A sequence's block table is a flat `list[int]` ordered [token_block][layer][kv_head]:
token block i of layer l, KV head h is `table[(i * L + l) * H + h]` (L layers, H KV heads), and the
table holds `n_token_blocks * L * H` ids. Token t of the sequence lives at slot `t % block_size` of
token block `t // block_size`. `table_index` and `slot_of` compute these; nothing else should.
"""

from __future__ import annotations

import math
import threading
from array import array

import torch

from .types import InvalidRequestError


def table_prefix(table, n: int, seq_id: int, num_blocks: int) -> array:
    """The first n ids of a block table (a list of ints or an array("i")) as an array("i") copy; an array("i")
    copies as one buffer (a long table costs microseconds, not milliseconds). Raises InvalidRequestError, naming
    the sequence, for a table shorter than n or an id that is no int32 (callers check the pool's range)."""
    if len(table) < n:
        raise InvalidRequestError(f"seq {seq_id}: block table has {len(table)} ids, needs {n} for its context")
    try:
        return table[:n] if isinstance(table, array) and table.typecode == "i" else array("i", table[:n])
    except OverflowError:
        raise InvalidRequestError(f"seq {seq_id}: block id out of range [0, {num_blocks})") from None


def pool_shape(num_blocks: int, block_size: int, head_dim: int) -> tuple[int, int, int, int]:
    """Shape of a pool of `num_blocks` head-wise blocks."""
    return (num_blocks, 2, block_size, head_dim)


def key_view(pool: torch.Tensor) -> torch.Tensor:
    """[N, head_dim, block_size]: K^T of each block (a view)."""
    n, _, bs, hd = pool.shape
    return pool.view(n, 2, hd, bs)[:, 0]


def value_view(pool: torch.Tensor) -> torch.Tensor:
    """[N, block_size, head_dim]: V of each block (a view)."""
    return pool[:, 1]


def allocate_pool(
    num_blocks: int,
    block_size: int,
    head_dim: int,
    dtype: torch.dtype,
    device: str | torch.device = "cpu",
    shared: bool = False,
) -> torch.Tensor:
    """Allocate a zeroed pool once. shared=True (CPU only): shared memory that child processes map."""
    if min(num_blocks, block_size, head_dim) < 1:
        raise ValueError(f"pool dims must be >= 1, got {num_blocks=} {block_size=} {head_dim=}")
    pool = torch.zeros(pool_shape(num_blocks, block_size, head_dim), dtype=dtype, device=device)
    if shared:
        if pool.device.type != "cpu":
            raise ValueError("shared=True is for CPU pools; CUDA pools are shared via IPC handles")
        pool.share_memory_()
    return pool


def blocks_per_token_block(num_layers: int, num_kv_heads: int) -> int:
    """Head-wise blocks one token block of an LLM costs (one per layer x KV head)."""
    return num_layers * num_kv_heads


def blocks_for_tokens(n_tokens: int, block_size: int, num_layers: int, num_kv_heads: int) -> int:
    """Head-wise blocks needed to hold `n_tokens` tokens of one sequence."""
    return math.ceil(n_tokens / block_size) * blocks_per_token_block(num_layers, num_kv_heads)


def table_index(token_block: int, layer: int, kv_head: int, num_layers: int, num_kv_heads: int) -> int:
    """Index into a block table of (token block, layer, KV head)."""
    return (token_block * num_layers + layer) * num_kv_heads + kv_head


def slot_of(position: int, block_size: int) -> tuple[int, int]:
    """(token block, slot in block) of a token position."""
    return divmod(position, block_size)


class LocalBlockSource:
    """A free list over block ids [first, first + capacity): implements types.BlockSource.

    acquire(n) returns n ids or None (nothing taken); release checks double frees and foreign ids
    (ValueError, nothing released). Thread-safe.
    """

    def __init__(self, capacity: int, first: int = 0):
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.first = first
        self._free = list(range(first + capacity - 1, first - 1, -1))  # pop() gives low ids first
        self._used: set[int] = set()
        self._lock = threading.Lock()

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return len(self._used)

    def can_acquire(self, n: int) -> bool:
        return 0 <= n <= len(self._free)

    def acquire(self, n: int) -> list[int] | None:
        if n < 0:
            raise ValueError(f"cannot acquire {n} blocks")
        with self._lock:
            if n > len(self._free):
                return None
            cut = len(self._free) - n
            ids = self._free[cut:]
            ids.reverse()  # as n pops would give them: low ids first
            del self._free[cut:]
            self._used.update(ids)
            return ids

    def release(self, ids: list[int]) -> None:
        with self._lock:
            self._check_release(ids)
            self._used.difference_update(ids)
            self._free.extend(reversed(ids))

    def _check_release(self, ids: list[int]) -> None:
        once = set(ids)
        if len(once) != len(ids):
            raise ValueError(f"release lists a block twice: {sorted(ids)}")
        if once <= self._used:  # (the common case, checked at once; _used holds only this source's ids)
            return
        for i in ids:
            if not self.first <= i < self.first + self.capacity:
                raise ValueError(f"block {i} is not from this source [{self.first}, {self.first + self.capacity})")
            if i not in self._used:
                raise ValueError(f"block {i} is not in use (double free?)")

    def check_integrity(self) -> None:
        """Raise AssertionError unless free + used == capacity with every block in exactly one set."""
        with self._lock:
            free = set(self._free)
            assert len(free) == len(self._free), "a block is on the free list twice"
            assert not free & self._used, f"blocks both free and used: {sorted(free & self._used)[:8]}"
            assert len(free) + len(self._used) == self.capacity, (
                f"free {len(free)} + used {len(self._used)} != capacity {self.capacity}"
            )
            everything = free | self._used
            assert everything == set(range(self.first, self.first + self.capacity)), "foreign block ids"
