"""The memory manager of one LLM unit: pools, LLM registrations, worker sessions, leases, quotas.

Device-free domain object (the servicer converts protobuf; server.py owns the segments and timers).
Contracts:
- One pool per (head_dim, dtype), given at construction as PoolHandles. An LLM leases from the pool
  of its head_dim and dtype; registering an LLM with no such pool raises InvalidArgumentError.
- Leases belong to (LLM, session). A session whose last call is older than heartbeat_timeout_s is
  expired by `expire()`: its blocks return to the pool and later calls naming it raise
  SessionExpiredError (its block ids may already belong to someone else).
- lease is all-or-nothing and enforces the LLM's quota; release is all-or-nothing (a double release
  or a block of another LLM or session changes nothing).
- `check()` raises AssertionError unless every pool's allocator is sound and per-LLM usage agrees.
All public methods take one lock, so threads and the event loop may share an instance.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from services.memmgr import quotas
from services.memmgr.allocator import BlockAllocator
from services.memmgr.types import (ConflictError, ExhaustedError, InvalidArgumentError, LLMSpec, LLMUsage,
                                   NotFoundError, Owner, PoolHandle, PoolKey, PoolStats, SessionExpiredError, Stats)

_EXPIRED_MEMORY = 10_000  # how many expired session ids are remembered (to answer FAILED_PRECONDITION)


@dataclass
class Session:
    id: str
    worker_id: str
    last_seen: float
    waiting: dict[str, int] = field(default_factory=dict)


@dataclass
class LLMState:
    spec: LLMSpec
    quota: int = 0
    used: int = 0
    denied: int = 0
    denied_since_adapt: bool = False


@dataclass
class Pool:
    handle: PoolHandle
    allocator: BlockAllocator


class MemoryManager:
    def __init__(self, pools: list[PoolHandle], heartbeat_timeout_s: float = 10.0,
                 policy: quotas.QuotaPolicy | None = None, clock: Callable[[], float] = time.monotonic,
                 unit_id: str = ""):
        self.pools: dict[PoolKey, Pool] = {}
        for h in pools:
            if h.key in self.pools:
                raise ValueError(f"two pools for {h.key}")
            self.pools[h.key] = Pool(h, BlockAllocator(h.num_blocks))
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.policy = policy or quotas.QuotaPolicy()
        self.clock = clock
        self.unit_id = unit_id
        self.llms: dict[str, LLMState] = {}
        self.sessions: dict[str, Session] = {}
        self._expired: deque[str] = deque(maxlen=_EXPIRED_MEMORY)
        self._expired_set: set[str] = set()
        self.expired_count = 0
        self._lock = threading.RLock()

    # ---- sessions ---------------------------------------------------------------------------
    def open_session(self, worker_id: str) -> str:
        if not worker_id:
            raise InvalidArgumentError("worker_id must be non-empty")
        with self._lock:
            sid = uuid.uuid4().hex
            self.sessions[sid] = Session(sid, worker_id, self.clock())
            return sid

    def close_session(self, session_id: str) -> int:
        """End a session; returns how many blocks it gave back."""
        with self._lock:
            self._session(session_id)
            return self._drop(session_id, expired=False)

    def heartbeat(self, session_id: str, waiting: dict[str, int] | None = None) -> None:
        with self._lock:
            s = self._session(session_id)
            s.waiting = {k: int(v) for k, v in (waiting or {}).items()}

    def expire(self, now: float | None = None) -> list[str]:
        """Expire sessions silent for longer than the heartbeat timeout; returns their ids."""
        with self._lock:
            now = self.clock() if now is None else now
            dead = [s.id for s in self.sessions.values() if now - s.last_seen > self.heartbeat_timeout_s]
            for sid in dead:
                self._drop(sid, expired=True)
            return dead

    def check_known(self, session_id: str) -> None:
        """NotFoundError for a session this memmgr never opened (one from before a restart), SessionExpiredError
        for an expired one; nothing for a live one (and, unlike any other call, it does not count as a sign of
        life: the auth check runs it before it knows the caller owns the session)."""
        with self._lock:
            if session_id not in self.sessions:
                self._session(session_id)  # raises the error the session's state calls for

    def _session(self, session_id: str) -> Session:
        s = self.sessions.get(session_id)
        if s is not None:
            s.last_seen = self.clock()  # any call proves the session alive
            return s
        if session_id in self._expired_set:
            raise SessionExpiredError(f"session {session_id} expired (no heartbeat for "
                                      f"{self.heartbeat_timeout_s:g}s); its blocks were reclaimed")
        raise NotFoundError(f"unknown session {session_id!r}")

    def _drop(self, session_id: str, expired: bool) -> int:
        freed = 0
        for name, st in self.llms.items():
            ids = self.pools[st.spec.pool_key].allocator.free_all(Owner(name, session_id))
            st.used -= len(ids)
            freed += len(ids)
        del self.sessions[session_id]
        if expired:
            self.expired_count += 1
            if len(self._expired) == self._expired.maxlen:
                self._expired_set.discard(self._expired[0])
            self._expired.append(session_id)
            self._expired_set.add(session_id)
        return freed

    # ---- LLMs -------------------------------------------------------------------------------
    def register(self, session_id: str, spec: LLMSpec) -> tuple[PoolHandle, int]:
        """Register (idempotently) an LLM; returns its pool's handle and its quota."""
        spec.validate()
        with self._lock:
            self._session(session_id)
            pool = self.pools.get(spec.pool_key)
            if pool is None:
                have = ", ".join(str(k) for k in self.pools) or "none"
                raise InvalidArgumentError(f"no KV pool for LLM {spec.name!r} with {spec.pool_key}; "
                                           f"this unit has pools: {have}")
            old = self.llms.get(spec.name)
            if old is not None and _same_shape(old.spec, spec):
                return pool.handle, old.quota
            if old is not None and old.used:
                raise ConflictError(f"LLM {spec.name!r} is registered with another shape ({old.spec}) "
                                    f"and holds {old.used} blocks")
            old_key = old.spec.pool_key if old else None
            self.llms[spec.name] = LLMState(spec)
            self._reset_quotas(spec.pool_key)
            if old_key and old_key != spec.pool_key:
                self._reset_quotas(old_key)
            return pool.handle, self.llms[spec.name].quota

    def _reset_quotas(self, key: PoolKey) -> None:
        members = {n: st for n, st in self.llms.items() if st.spec.pool_key == key}
        q = quotas.initial_quotas(self.pools[key].allocator.capacity,
                                  {n: st.spec.rate for n, st in members.items()},
                                  {n: st.spec.blocks_per_token_block for n, st in members.items()})
        for n, st in members.items():
            st.quota = q[n]

    def _llm(self, name: str) -> LLMState:
        st = self.llms.get(name)
        if st is None:
            raise NotFoundError(f"LLM {name!r} is not registered with this memmgr")
        return st

    # ---- leases -----------------------------------------------------------------------------
    def lease(self, session_id: str, llm: str, n: int) -> list[int]:
        """Exactly n block ids for `llm`, or ExhaustedError (nothing taken)."""
        if n < 0:
            raise InvalidArgumentError(f"n must be >= 0, got {n}")
        with self._lock:
            self._session(session_id)
            st = self._llm(llm)
            alloc = self.pools[st.spec.pool_key].allocator
            if st.used + n > st.quota:
                self._deny(st)
                raise ExhaustedError(f"LLM {llm!r} over quota: used {st.used} + requested {n} > quota "
                                     f"{st.quota} blocks ({alloc.num_free} free in the pool)")
            ids = alloc.allocate(n, Owner(llm, session_id))
            if ids is None:
                self._deny(st)
                raise ExhaustedError(f"pool {st.spec.pool_key} has {alloc.num_free} free blocks, {n} "
                                     f"requested by LLM {llm!r} (used {st.used}, quota {st.quota})")
            st.used += n
            return ids

    @staticmethod
    def _deny(st: LLMState) -> None:
        st.denied += 1
        st.denied_since_adapt = True

    def release(self, session_id: str, llm: str, ids: list[int]) -> None:
        """Give back blocks; InvalidArgumentError (nothing changed) unless all are (llm, session)'s."""
        with self._lock:
            self._session(session_id)
            st = self._llm(llm)
            self.pools[st.spec.pool_key].allocator.free(list(ids), Owner(llm, session_id))
            st.used -= len(ids)

    # ---- quotas -----------------------------------------------------------------------------
    def set_quota(self, llm: str, quota_blocks: int) -> None:
        """Set a quota; below current usage it only blocks new leases until usage falls."""
        if quota_blocks < 0:
            raise InvalidArgumentError(f"quota_blocks must be >= 0, got {quota_blocks}")
        with self._lock:
            self._llm(llm).quota = quota_blocks

    def adapt(self) -> list[tuple[str, int, int]]:
        """One ADBS round per pool; returns (llm, old quota, new quota) for every change."""
        with self._lock:
            changes = []
            for key in self.pools:
                changes += self._adapt_pool(key)
            for st in self.llms.values():
                st.denied_since_adapt = False
            return changes

    def _adapt_pool(self, key: PoolKey) -> list[tuple[str, int, int]]:
        members = {n: st for n, st in self.llms.items() if st.spec.pool_key == key}
        waiting = self._waiting()
        saturated = {n for n, st in members.items() if st.denied_since_adapt
                     or (waiting.get(n, 0) > 0 and st.used >= self.policy.threshold * st.quota)}
        new = quotas.adapt({n: st.quota for n, st in members.items()},
                           {n: st.used for n, st in members.items()}, saturated,
                           {n: st.spec.rate * st.spec.blocks_per_token_block for n, st in members.items()},
                           self.policy)
        changes = [(n, members[n].quota, q) for n, q in new.items() if q != members[n].quota]
        for n, q in new.items():
            members[n].quota = q
        return changes

    def _waiting(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for s in self.sessions.values():
            for n, w in s.waiting.items():
                total[n] = total.get(n, 0) + w
        return total

    # ---- observation ------------------------------------------------------------------------
    def stats(self) -> Stats:
        with self._lock:
            pools = [PoolStats(k.head_dim, k.dtype, p.allocator.capacity, p.allocator.num_free)
                     for k, p in self.pools.items()]
            llms = [LLMUsage(n, st.used, st.quota, st.spec.head_dim, st.spec.dtype, st.denied)
                    for n, st in self.llms.items()]
            return Stats(sum(p.capacity_blocks for p in pools), sum(p.free_blocks for p in pools),
                         llms, pools, len(self.sessions), self.expired_count, self.unit_id)

    def check(self) -> None:
        """The integrity check: raise AssertionError naming the first broken invariant."""
        with self._lock:
            for key, pool in self.pools.items():
                pool.allocator.check()
                for owner in pool.allocator.owners():
                    assert owner.session in self.sessions, f"{key}: blocks held by dead session {owner}"
                    assert owner.llm in self.llms, f"{key}: blocks held by unknown LLM {owner}"
            for name, st in self.llms.items():
                alloc = self.pools[st.spec.pool_key].allocator
                held = sum(alloc.held_by(Owner(name, s)) for s in self.sessions)
                assert held == st.used, f"LLM {name!r}: used {st.used} but holds {held} blocks"


def _same_shape(a: LLMSpec, b: LLMSpec) -> bool:
    return (a.num_layers, a.num_kv_heads, a.head_dim, a.dtype) == (b.num_layers, b.num_kv_heads, b.head_dim, b.dtype)
