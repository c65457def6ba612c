"""The worker's per-LLM block sources over memmgr leases (engine BlockSources, memmgr mode).

`KVBlockSource` is memmgr's LeasedBlockSource (chunked leases, a local free list kept between low
and high by a background thread) plus:
- `park()`: give the local free list back to memmgr NOW and stop refilling until the next
  `acquire`, so an idle LLM holds no block it does not use (done-when 3 of issue 3: after a burst,
  memmgr's free_blocks returns to capacity_blocks);
- an acquisition never waits on memmgr (it runs under the engine lock): one that finds the local
  list short returns None and the refill thread leases the difference (LeasedBlockSource);
- `set_low(low)`: the worker raises the low mark with demand (about one token block per running
  sequence per block_size decode steps; see kv.MemmgrKV.sync); high follows at low + (high - low).

KVBlockSource extends LeasedBlockSource through its internals (its lock, free list and refill
hooks): it changes with services/memmgr/block_source.py, where park/top-up could move one day.

`MemmgrSources` implements the engine's BlockSources (services/worker/engine/block_manager.py):
`open(llm)` builds the LLM's source in the worker's session (the LLM must be registered first:
MemmgrClient.register_llm), `close(llm)` returns its cached blocks and stops its thread. Sizes are
in token blocks (x layers x KV heads head-wise blocks), from the worker's LeaseConfig.
"""

from __future__ import annotations

import threading

from services.memmgr.block_source import LeasedBlockSource
from services.memmgr.client import MemmgrClient
from services.worker.config import LeaseConfig


class KVBlockSource(LeasedBlockSource):
    """LeasedBlockSource that can be parked (cache returned, no refill) while its LLM is idle."""

    def __init__(self, *args, token_block: int = 1, **kwargs):
        self._parked = False
        self.token_block = token_block  # head-wise blocks per token block of this LLM
        super().__init__(*args, **kwargs)
        self.base_low, self.base_high = self.low, self.high

    def acquire(self, n: int) -> list[int] | None:
        """As LeasedBlockSource's, but a lost session grants nothing (None) instead of raising inside
        the scheduler: the worker fails and replaces the session (services/worker/kv.py)."""
        self._parked = False  # demand again: the refill thread resumes
        if self._dead is not None:
            return None
        return super().acquire(n)

    def set_low(self, low: int) -> None:
        """Raise (or restore) the refill mark: never below the configured low; high keeps its gap."""
        with self._cond:
            self.low = max(low, self.base_low)
            self.high = self.low + (self.base_high - self.base_low)
            self._cond.notify()

    def park(self) -> int:
        """Return the local free list to memmgr now; refilling stops until the next acquire.
        Returns how many blocks went back (a failed release keeps them, logged)."""
        with self._cond:
            if self._dead is not None or self._closed:
                return 0
            self._parked = True
            ids, self._free = self._free, []
        if ids:
            self._give_back(ids)
        return len(ids)

    @property
    def parked(self) -> bool:
        return self._parked

    # The refill thread (LeasedBlockSource._run) calls these two: no refill while parked.
    def _needs_work(self) -> bool:
        if self._parked and not (self._closed or self._dead) and len(self._free) <= self.high:
            return False
        return super()._needs_work()

    def _refill(self, need: int) -> None:
        if need <= 0 or self._parked:
            return
        got = self._lease_for(need)
        if not got:
            return
        with self._cond:
            parked = self._parked
        if parked:  # parked while the lease was in flight: give it straight back
            self._give_back(got)
        else:
            self._arrived(got)


class MemmgrSources:
    """engine BlockSources: one KVBlockSource per registered LLM of the client's session."""

    def __init__(self, client: MemmgrClient, leases: LeaseConfig):
        self.client, self.leases = client, leases
        self.by_llm: dict[str, KVBlockSource] = {}
        self._lock = threading.Lock()

    def open(self, llm: str) -> KVBlockSource:
        if llm not in self.client.registered:
            raise KeyError(f"LLM {llm!r} is not registered with memmgr (register_llm first)")
        bpt = self.client.registered[llm][0].blocks_per_token_block
        c = self.leases
        src = KVBlockSource(self.client.address, self.client.session_id, llm, c.chunk_token_blocks * bpt,
                            c.low_token_blocks * bpt, c.high_token_blocks * bpt, self.client.rpc_timeout_s,
                            token_block=bpt, metadata=self.client.metadata)  # the token and the session's key
        with self._lock:
            old = self.by_llm.pop(llm, None)
            self.by_llm[llm] = src
            self.client.sources.append(src)  # heartbeat expiry marks it dead; client.close closes it
        if old is not None:
            self._close(old)
        return src

    def close(self, llm: str) -> None:
        """Stop the LLM's source and return its cached blocks (the engine holds none of them)."""
        with self._lock:
            src = self.by_llm.pop(llm, None)
        if src is not None:
            self._close(src)

    def _close(self, src: KVBlockSource) -> None:
        src.close()
        with self._lock:
            if src in self.client.sources:
                self.client.sources.remove(src)

    def get(self, llm: str) -> KVBlockSource | None:
        return self.by_llm.get(llm)

    @property
    def waits(self) -> tuple[int, int]:
        """(acquires that found the local list short, all acquires) over the open sources."""
        srcs = list(self.by_llm.values())
        return sum(s.waits for s in srcs), sum(s.calls for s in srcs)
