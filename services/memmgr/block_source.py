"""LeasedBlockSource: the engine's BlockSource over memmgr leases, with a local free list.

The engine's scheduler thread calls `acquire(n)` / `release(ids)` synchronously under the engine's
lock (contract: services/worker/engine/types.BlockSource), so neither ever waits on an RPC: blocks
are leased from memmgr in chunks ahead of need by a background thread that refills the local free
list when it falls below `low` and returns the surplus above `high` in chunks. An `acquire` that finds
the local list short returns None at once and asks that thread for the difference (counted in `waits`;
`calls` counts every acquire); `refilling` says such a request is out (the scheduler then lets the
sequence wait instead of preempting another), and `on_refill` (when set) is called once it has arrived,
so the engine plans again. Both paths use a SYNC gRPC
channel of their own, so no event loop is involved and a busy worker loop never stalls a step.
Ids the engine holds are tracked: releasing an id not acquired (or twice) raises ValueError and
changes nothing. If memmgr reports the session expired, every later call raises SessionExpiredError:
the ids held may already belong to someone else, so the engine must not use them.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc

from muxserve.v1 import memmgr_pb2 as pb
from muxserve.v1 import memmgr_pb2_grpc as pb_grpc
from services.memmgr.errors import domain_error
from services.memmgr.types import ExhaustedError, MemmgrError, SessionExpiredError

log = logging.getLogger(__name__)


class LeasedBlockSource:
    def __init__(self, address: str, session_id: str, llm: str, chunk: int, low: int, high: int,
                 rpc_timeout_s: float = 10.0, deny_backoff_s: float = 0.02, metadata: tuple = ()):
        """`metadata`: what every Lease/Release carries (the internal token and the session's key, auth.py)."""
        if not 0 <= low < high or chunk < 1:
            raise ValueError(f"need chunk >= 1 and 0 <= low < high, got {chunk=} {low=} {high=}")
        self.llm, self.session_id = llm, session_id
        self.chunk, self.low, self.high = chunk, low, high
        self.rpc_timeout_s, self.deny_backoff_s, self.metadata = rpc_timeout_s, deny_backoff_s, tuple(metadata)
        self.calls = self.waits = self.rpcs = 0
        self._free: list[int] = []
        self._held: set[int] = set()
        self._want = 0  # blocks an acquire found missing, asked of the refill thread
        self.on_refill = None  # callable, called (no lock held) when a refill has arrived
        self._denied_at = -1e9
        self._dead: MemmgrError | None = None
        self.unreachable = ""  # why the last lease failed other than by a refusal ("" once one succeeds)
        self._closed = False
        self._cond = threading.Condition()
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.MemmgrStub(self._channel)
        self._thread = threading.Thread(target=self._run, name=f"memmgr-refill-{llm}", daemon=True)
        self._thread.start()

    # ---- BlockSource ----------------------------------------------------------------------------
    def acquire(self, n: int) -> list[int] | None:
        """Exactly n block ids, or None when memmgr will not grant them now (nothing taken)."""
        if n < 0:
            raise ValueError(f"cannot acquire {n} blocks")
        with self._cond:
            self._raise_if_dead()
            self.calls += 1
            if len(self._free) >= n:
                return self._take(n)
            self.waits += 1
            self._want = max(self._want, n - len(self._free))
            self._cond.notify()  # the refill thread leases it; no RPC under the caller's lock
            return None

    @property
    def refilling(self) -> bool:
        """An acquire found the list short and its refill is on the way (memmgr did not just refuse)."""
        with self._cond:
            return self._want > 0 and time.monotonic() - self._denied_at >= self.deny_backoff_s

    def release(self, ids: list[int]) -> None:
        """Return ids acquired from this source to the local free list (surplus goes back later)."""
        with self._cond:
            if len(set(ids)) != len(ids) or not self._held.issuperset(ids):
                bad = sorted(set(ids) - self._held) or sorted(ids)
                raise ValueError(f"release of blocks not held from this source (or listed twice): {bad[:8]}")
            self._held.difference_update(ids)
            self._free.extend(ids)
            if len(self._free) > self.high:
                self._cond.notify()

    # ---- observation ----------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_held(self) -> int:
        return len(self._held)

    @property
    def wait_fraction(self) -> float:
        return self.waits / self.calls if self.calls else 0.0

    def close(self) -> None:
        """Stop the refill thread and give the local free list back (held ids stay leased)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5)
        with self._cond:
            ids, self._free = self._free, []
        if ids and self._dead is None:
            try:
                self._release_rpc(ids)
            except MemmgrError as e:
                log.warning("memmgr: could not return %d blocks of %s at close: %s", len(ids), self.llm, e)
        self._channel.close()

    def mark_dead(self, err: MemmgrError) -> None:
        """The session is gone (heartbeat said so): fail every later call."""
        with self._cond:
            self._dead = err
            self._cond.notify()

    # ---- internals ------------------------------------------------------------------------------
    def _take(self, n: int) -> list[int]:
        ids = self._free[len(self._free) - n:]
        del self._free[len(self._free) - n:]
        self._held.update(ids)
        if len(self._free) < self.low:
            self._cond.notify()
        return ids

    def _raise_if_dead(self) -> None:
        if self._dead is not None:
            raise self._dead

    def _lease_any(self, sizes: list[int]) -> list[int]:
        """Lease the first size memmgr grants; [] if none (and start the denial backoff)."""
        for n in dict.fromkeys(s for s in sizes if s > 0):
            try:
                ids = self._lease_rpc(n)
                self.unreachable = ""
                return ids
            except ExhaustedError:
                continue
            except SessionExpiredError as e:
                self.mark_dead(e)
                raise
            except MemmgrError as e:
                if not self.unreachable:  # logged once per outage
                    log.warning("memmgr lease for %s failed: %s", self.llm, e)
                self.unreachable = str(e)
                break
        self._denied_at = time.monotonic()
        return []

    def _lease_rpc(self, n: int) -> list[int]:
        self.rpcs += 1
        try:
            resp = self._stub.Lease(pb.LeaseRequest(session_id=self.session_id, llm=self.llm, n=n),
                                    timeout=self.rpc_timeout_s, metadata=self.metadata)
        except grpc.RpcError as e:
            raise domain_error(e) from None
        return list(resp.block_ids)

    def _release_rpc(self, ids: list[int]) -> None:
        self.rpcs += 1
        try:
            self._stub.Release(pb.ReleaseRequest(session_id=self.session_id, llm=self.llm, block_ids=ids),
                               timeout=self.rpc_timeout_s, metadata=self.metadata)
        except grpc.RpcError as e:
            raise domain_error(e) from None

    def _run(self) -> None:
        """Background: keep low <= len(free) <= high with chunked leases and releases."""
        while True:
            with self._cond:
                self._cond.wait_for(self._needs_work, timeout=0.5)
                if self._closed or self._dead is not None:
                    return
                need = self.low + self._want - len(self._free)
                surplus = self._pop_surplus()
            try:
                self._refill(need) if surplus is None else self._give_back(surplus)
            except MemmgrError:
                pass  # expired (marked dead) or unreachable: logged where it happened
            except Exception:
                log.exception("memmgr refill thread for %s", self.llm)

    def _needs_work(self) -> bool:
        if self._closed or self._dead is not None or len(self._free) > self.high:
            return True
        backing_off = time.monotonic() - self._denied_at < max(self.deny_backoff_s, 0.05)
        return (len(self._free) < self.low or self._want > 0) and not backing_off

    def _pop_surplus(self) -> list[int] | None:
        if len(self._free) <= self.high:
            return None
        keep = (self.low + self.high) // 2
        out = self._free[:len(self._free) - keep]  # the oldest-freed first; recently freed stay hot
        del self._free[:len(self._free) - keep]
        return out

    def _refill(self, need: int) -> None:
        if need <= 0:
            return
        got = self._lease_for(need)
        if got:
            self._arrived(got)

    def _lease_for(self, need: int) -> list[int]:
        """A refill of `need` blocks: a chunk at least, else what is needed, else what an acquire asked for."""
        return self._lease_any([max(self.chunk, need), need, self._want])

    def _arrived(self, ids: list[int]) -> None:
        with self._cond:
            self._free.extend(ids)
            if len(self._free) >= self._want:
                self._want = 0
        if self.on_refill is not None:
            self.on_refill()

    def _give_back(self, ids: list[int]) -> None:
        try:
            self._release_rpc(ids)
        except MemmgrError as e:
            if isinstance(e, SessionExpiredError):
                self.mark_dead(e)
                return
            log.warning("memmgr release for %s failed (%s); keeping %d blocks", self.llm, e, len(ids))
            with self._cond:
                self._free.extend(ids)
