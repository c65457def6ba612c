"""ADBS: adaptive batch scheduling across the LLMs of one unit sharing one head-wise block pool.

`schedule(busy, budget)` plans a dispatch for each idle job (at most one in flight per job); the
engine calls it again whenever any dispatch returns (an event-driven loop, not lock-step rounds).
- mode "spatial-temporal" (MuxServe): prefill first, LLMs in round-robin order, FCFS within an LLM;
  a batch is bounded by the token budget, max_num_seqs and the LLM's quota (a prompt over the
  budget is computed in chunks). A job is admitted when its compute share fits the unit's free
  compute plus the overload allowance (compute.py). Decode is held back only while a prefill is
  pending that compute does not admit. Then decode, one token per running sequence, the jobs in
  deadline order (its latest return + deadline_scale x its mean dispatch time: SLOs are multiples of
  each LLM's latency alone, so a job of 2 ms steps must not wait 20 ms behind one of 20 ms steps
  whenever both are ready; measured in docs/multiplexing.md), or least recently dispatched first.
- mode "temporal": one dispatch at a time in the unit, FCFS across LLMs by their oldest request.
A plan maps each sequence to the number of its uncomputed tokens to compute, so prefill, decode and
recompute after preemption are the same thing. Out of blocks in decode: preempt the youngest
sequence (its blocks return; it recomputes later); that LLM then prefills nothing new until one of
its sequences finishes (MuxServe's wait-for-cache), so a tight pool does not churn. A sequence
alone in the unit that still does not fit finishes with an error, so the loop never spins. A
sequence is in at most one dispatch at a time.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from operator import attrgetter

from services.worker.engine.block_manager import BlockManager, LLMBlocks
from services.worker.engine.compute import ComputeBudget
from services.worker.engine.job_order import JobOrder
from services.worker.engine.sequence import Sequence, SeqStatus
from services.worker.engine.types import CapacityError, EngineError, PoolLostError


MODES = ("spatial-temporal", "temporal")
_arrival = attrgetter("arrival")


@dataclass
class Dispatch:
    """One job's batch: plan[seq] tokens to compute for each seq (insertion order = batch order)."""

    llm: str
    kind: str  # "prefill" | "decode"
    plan: dict[Sequence, int] = field(default_factory=dict)


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_prefill_tokens: int,
                 mode: str = "spatial-temporal", deadline_scale: float = 0.0):
        self.set_mode(mode)
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: dict[str, deque[Sequence]] = {}
        self.running: dict[str, list[Sequence]] = {}
        self._rr = 0
        self.num_preemptions = 0
        self.finished: list[Sequence] = []  # finished since the engine last drained this
        self.wait_for_cache: set[str] = set()  # LLMs preempted since their last sequence finished
        self.order = JobOrder(deadline_scale)  # decode order; the simulator sets order.clock to its virtual clock

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unit mode must be one of {MODES}, got {mode!r}")
        self.mode = mode

    # ---- membership -------------------------------------------------------------------------
    def add_llm(self, name: str) -> None:
        self.waiting.setdefault(name, deque())
        self.running.setdefault(name, [])

    def remove_llm(self, name: str) -> None:
        if self.waiting.get(name) or self.running.get(name):
            raise RuntimeError(f"LLM {name!r} still has sequences")
        self.waiting.pop(name, None)
        self.running.pop(name, None)

    def add(self, seq: Sequence) -> None:
        self.waiting[seq.llm].append(seq)

    def abort(self, seq: Sequence) -> None:
        """Finish seq with "abort"; its blocks return now, or when its in-flight dispatch returns."""
        if seq.is_finished:
            return
        seq.finish("abort")
        self.finished.append(seq)
        if not seq.in_flight:
            self._drop(seq)

    def finish(self, seq: Sequence, reason: str, error: EngineError | None = None) -> None:
        seq.finish(reason, error)
        self.finished.append(seq)
        if not seq.in_flight:
            self._drop(seq)

    def _drop(self, seq: Sequence) -> None:
        self.wait_for_cache.discard(seq.llm)  # a sequence finished: its blocks make room again
        self.blocks[seq.llm].free(seq)
        if seq in self.running[seq.llm]:
            self.running[seq.llm].remove(seq)
        elif seq in self.waiting[seq.llm]:
            self.waiting[seq.llm].remove(seq)

    def has_unfinished(self, llm: str | None = None) -> bool:
        names = [llm] if llm else list(self.waiting)
        return any(self.waiting[n] or self.running[n] for n in names)

    def all_seqs(self) -> list[Sequence]:
        return [s for n in self.waiting for s in (*self.waiting[n], *self.running[n])]

    # ---- planning ---------------------------------------------------------------------------
    def schedule(self, busy: frozenset = frozenset(), budget: ComputeBudget | None = None) -> list[Dispatch]:
        """Plan dispatches for the idle jobs; busy holds (llm, kind) jobs with a dispatch in flight.

        budget (None: every job admitted) admits a job when its compute share fits and is charged for
        each dispatch planned (the caller gives it back when the dispatch returns)."""
        budget = budget or ComputeBudget()
        names = list(self.waiting)
        if not names:
            return []
        if self.mode == "temporal":
            out = self._schedule_temporal(busy)
            for d in out:
                budget.take(d.llm, d.kind)
        else:
            self._rr = (self._rr + 1) % len(names)
            out = self._schedule_multiplexed(names[self._rr:] + names[:self._rr], busy, budget)
        budget.spread([(d.llm, d.kind) for d in out])
        for d in out:
            for s in d.plan:
                s.in_flight = True
        return out

    def _schedule_multiplexed(self, order: list[str], busy: frozenset, budget: ComputeBudget) -> list[Dispatch]:
        """Prefill first (round-robin); decode held back while a prefill is pending that compute does
        not admit; then decode. No job overtakes one that waits for compute (the
        first that does not fit ends the pass), so none starves; decode jobs in JobOrder's order."""
        out, hold = [], False
        for name in order:
            if (name, "prefill") in busy or not self.prefill_pending(name):
                continue
            if not budget.fits(name, "prefill"):
                hold = True
                break
            d = self._prefill(name)
            if d.plan:
                budget.take(name, "prefill")
                out.append(d)
        if hold:
            return self._stamp(out)
        planned = {s for d in out for s in d.plan}
        for name in sorted(order, key=lambda n: self.order.key((n, "decode"))):
            if (name, "decode") in busy or not self._decodable(name, planned):
                continue
            if not budget.fits(name, "decode"):
                break
            d = self._decode(name, planned)
            if d.plan:
                budget.take(name, "decode")
                out.append(d)
        return self._stamp(out)

    def _decodable(self, name: str, planned: set[Sequence]) -> bool:
        return any(self._wants_decode(s, planned) for s in self.running[name])

    @staticmethod
    def _wants_decode(seq: Sequence, planned: set[Sequence]) -> bool:
        if seq.in_flight or seq.status is not SeqStatus.RUNNING or seq in planned:
            return False
        done = seq.num_computed_tokens  # not seq.is_prefill, inlined (per sequence per pass)
        return done != 0 and len(seq.prompt_token_ids) + len(seq.output_token_ids) - done <= 1

    def _stamp(self, out: list[Dispatch]) -> list[Dispatch]:
        for d in out:
            self.order.started((d.llm, d.kind))
        return out

    def _schedule_temporal(self, busy: frozenset) -> list[Dispatch]:
        """One dispatch at a time in the unit: the LLM with the oldest unfinished request goes first
        (FCFS across LLMs), its prefill before its decode."""
        if busy:
            return []
        for name in sorted(self.waiting, key=self._oldest):
            d = self._prefill(name) if self.prefill_pending(name) else Dispatch(name, "prefill")
            if not d.plan:
                d = self._decode(name, set())
            if d.plan:
                return [d]
        return []

    def _oldest(self, name: str) -> float:
        return min((s.arrival for s in (*self.waiting[name], *self.running[name])), default=float("inf"))

    def prefill_pending(self, name: str) -> bool:
        """Prompt work of `name` that could start now: not in flight, its first batch fits the blocks,
        and (wait-for-cache) no preemption since the last of its sequences finished."""
        running = self.running[name]
        if name in self.wait_for_cache and running:
            return False
        seq = _prompt_work(running)
        if seq is None and not self.waiting[name]:
            return False
        seq = seq or self.waiting[name][0]
        if seq.status is not SeqStatus.RUNNING and len(running) >= self.max_num_seqs:
            return False
        n = min(seq.num_uncomputed_tokens, self.max_prefill_tokens)
        return self.blocks[name].can_append(seq, n, ignore_quota=not running)

    def _prefill(self, name: str) -> Dispatch:
        """FCFS prefill batch of one LLM, bounded by the token budget, max_num_seqs and its quota."""
        view, d, budget = self.blocks[name], Dispatch(name, "prefill"), self.max_prefill_tokens
        running = self.running[name]
        cands = [s for s in running if not s.in_flight and s.is_prefill] + list(self.waiting[name])
        for seq in cands:
            if budget <= 0 or (seq.status is not SeqStatus.RUNNING and len(running) >= self.max_num_seqs):
                break
            n = min(seq.num_uncomputed_tokens, budget)
            if not view.append(seq, n, ignore_quota=not running and not d.plan):
                break
            self._admit(seq)
            d.plan[seq] = n
            budget -= n
        return d

    def _admit(self, seq: Sequence) -> None:
        seq.first_scheduled = seq.first_scheduled or time.monotonic()
        if seq.status is not SeqStatus.RUNNING:
            self.waiting[seq.llm].remove(seq)
            self.running[seq.llm].append(seq)
            seq.status = SeqStatus.RUNNING

    def _decode(self, name: str, planned: set[Sequence]) -> Dispatch:
        """One decode token for each running sequence of the LLM (oldest first); adds to planned."""
        d, view = Dispatch(name, "decode"), self.blocks[name]
        for seq in sorted(self.running[name], key=_arrival):
            if not self._wants_decode(seq, planned):
                continue
            if not view.needed(seq, 1) or self._grow(seq, planned):  # most steps: its blocks hold the token
                d.plan[seq] = 1
                planned.add(seq)
        return d

    def _grow(self, seq: Sequence, planned: set[Sequence]) -> bool:
        """Make room for seq's next token, preempting the youngest as needed; False if seq waits."""
        view = self.blocks[seq.llm]
        while True:
            lone = self.running[seq.llm] == [seq]
            if view.append(seq, 1, ignore_quota=lone):
                return True
            if view.refilling:
                return False  # blocks are on the way from memmgr: seq waits, nobody is preempted
            victim = self._victim(seq, view, planned, lone)
            if victim is None:
                if not any(s.block_table for s in self.all_seqs() if s is not seq):
                    self.finish(seq, "error", _no_blocks(view))
                return False
            self._preempt(victim)
            if victim is seq:
                return False

    def _victim(self, seq: Sequence, view: LLMBlocks, planned: set[Sequence], lone: bool):
        """Youngest preemptible sequence: same LLM first; any LLM when the pool itself is full."""
        def ok(s):
            return s.block_table and not s.in_flight and s not in planned and s.status is SeqStatus.RUNNING
        own = [s for s in self.running[seq.llm] if ok(s) or s is seq]
        if not lone and view.used + view.needed(seq, 1) > view.quota:
            return max(own, key=lambda s: s.arrival)
        others = [s for n, r in self.running.items() for s in r if ok(s) or s is seq]
        return max(others, key=lambda s: s.arrival) if len(others) > 1 else None

    def _preempt(self, seq: Sequence) -> None:
        self.blocks[seq.llm].free(seq)
        self.running[seq.llm].remove(seq)
        seq.num_computed_tokens = 0
        seq.status = SeqStatus.PREEMPTED
        self.waiting[seq.llm].appendleft(seq)
        self.wait_for_cache.add(seq.llm)
        self.num_preemptions += 1

    # ---- results ----------------------------------------------------------------------------
    def complete(self, d: Dispatch, token_ids: list[int | None]) -> list[Sequence]:
        """Apply a returned dispatch; returns the live sequences that sampled a new token."""
        sampled, finished = [], SeqStatus.FINISHED
        self.order.returned((d.llm, d.kind))
        for (seq, n), tok in zip(d.plan.items(), token_ids):  # (per sequence per step: properties inlined)
            seq.in_flight = False
            if seq.status is finished:  # aborted while in flight: its blocks return only now
                self._drop(seq)
                continue
            seq.num_computed_tokens += n
            out = seq.output_token_ids
            if tok is not None and seq.num_computed_tokens == len(seq.prompt_token_ids) + len(out):
                out.append(tok)
                sampled.append(seq)
        return sampled

    def fail(self, d: Dispatch, error: EngineError) -> None:
        """The dispatch's job failed: finish each of its sequences with the error."""
        for seq in d.plan:
            seq.in_flight = False
            if seq.is_finished:
                self._drop(seq)
            else:
                self.finish(seq, "error", error)


def _prompt_work(running: list[Sequence]) -> Sequence | None:
    """The first running sequence not in flight with prompt (or recompute) work: is_prefill, inlined."""
    for s in running:
        done = s.num_computed_tokens
        if not s.in_flight and (done == 0 or len(s.prompt_token_ids) + len(s.output_token_ids) - done > 1):
            return s
    return None


def _no_blocks(view) -> Exception:
    """Why a lone sequence got no block: its memmgr lease failed (UNAVAILABLE: retry), or the
    pool is too small for it (RESOURCE_EXHAUSTED)."""
    why = getattr(view.source, "unreachable", "")
    if why:
        return PoolLostError(f"no KV blocks: leasing from memmgr failed ({why}); retry")
    return CapacityError("the sequence does not fit in the KV pool")
