"""A device-free allocator of head-wise block ids [0, capacity) with one owner per leased block.

Paired check-and-commit calls: `can_allocate(n)` / `allocate(n, owner)` (None when it does not fit,
nothing taken), `free(ids, owner)` (all-or-nothing: a double free, a foreign or out-of-range id
raises InvalidArgumentError and changes nothing). `check()` is the integrity check the tests and the
idle timer run: free + leased == capacity, every block free XOR owned by exactly one owner.
Not thread-safe on its own: the MemoryManager serializes calls.
"""

from __future__ import annotations

from collections import Counter
from typing import Hashable

from services.memmgr.types import InvalidArgumentError


class BlockAllocator:
    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._free = list(range(capacity - 1, -1, -1))  # a stack: pop() hands out low ids first
        self._owner: list[Hashable | None] = [None] * capacity
        self._held: Counter = Counter()  # owner -> number of blocks held

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_leased(self) -> int:
        return self.capacity - len(self._free)

    def held_by(self, owner: Hashable) -> int:
        return self._held.get(owner, 0)

    def owner_of(self, block: int) -> Hashable | None:
        return self._owner[block]

    def owners(self) -> list[Hashable]:
        return [o for o, n in self._held.items() if n]

    def can_allocate(self, n: int) -> bool:
        return 0 <= n <= len(self._free)

    def allocate(self, n: int, owner: Hashable) -> list[int] | None:
        """Take n free blocks for `owner`; None (nothing taken) when fewer than n are free."""
        if n < 0:
            raise InvalidArgumentError(f"cannot allocate {n} blocks")
        if owner is None:
            raise ValueError("owner must not be None")
        if n > len(self._free):
            return None
        ids = self._free[len(self._free) - n:][::-1]
        del self._free[len(self._free) - n:]
        for i in ids:
            self._owner[i] = owner
        self._held[owner] += n
        return ids

    def free(self, ids: list[int], owner: Hashable) -> None:
        """Return `owner`'s blocks; raise InvalidArgumentError (nothing freed) unless all are its own."""
        self._check_free(ids, owner)
        for i in ids:
            self._owner[i] = None
        self._free.extend(reversed(ids))
        self._held[owner] -= len(ids)
        if not self._held[owner]:
            del self._held[owner]

    def free_all(self, owner: Hashable) -> list[int]:
        """Return every block `owner` holds (a crashed or closed session); the ids freed."""
        if not self._held.get(owner):
            return []
        ids = [i for i, o in enumerate(self._owner) if o == owner]
        self.free(ids, owner)
        return ids

    def _check_free(self, ids: list[int], owner: Hashable) -> None:
        if len(set(ids)) != len(ids):
            dup = sorted(i for i, c in Counter(ids).items() if c > 1)
            raise InvalidArgumentError(f"release lists blocks more than once: {dup[:8]}")
        for i in ids:
            if not 0 <= i < self.capacity:
                raise InvalidArgumentError(f"block {i} is out of range [0, {self.capacity})")
            held = self._owner[i]
            if held is None:
                raise InvalidArgumentError(f"block {i} is not leased (released twice?)")
            if held != owner:
                raise InvalidArgumentError(f"block {i} is owned by {_who(held)}, not by {_who(owner)}")

    def check(self) -> None:
        """Raise AssertionError naming the first broken invariant."""
        free = set(self._free)
        assert len(free) == len(self._free), "a block is on the free list twice"
        assert all(0 <= i < self.capacity for i in free), "a free id is out of range"
        leased = [i for i, o in enumerate(self._owner) if o is not None]
        both = free.intersection(leased)
        assert not both, f"blocks both free and leased: {sorted(both)[:8]}"
        assert len(free) + len(leased) == self.capacity, (
            f"free {len(free)} + leased {len(leased)} != capacity {self.capacity}")
        counted = Counter(o for o in self._owner if o is not None)
        assert counted == +self._held, f"per-owner counts drifted: {dict(counted)} vs {dict(self._held)}"


def _who(owner: Hashable) -> str:
    llm, session = getattr(owner, "llm", None), getattr(owner, "session", None)
    return f"LLM {llm!r} (session {session})" if llm is not None else repr(owner)
