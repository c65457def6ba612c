"""ADBS: adaptive batch scheduling across the LLMs of one unit sharing one head-wise block pool.

Each round (`schedule`) plans at most one prefill dispatch and one decode dispatch per LLM:
- prefill first, LLMs in round-robin order, FCFS within an LLM; a batch is bounded by the token
  budget, max_num_seqs and the LLM's quota (several prompts of different lengths per batch; a prompt
  over the budget is computed in chunks). If an LLM still has waiting work that fits its quota (cut
  only by the budget), decode is held back this round so that prefill gets the compute.
- then decode, round-robin, one token per running sequence per dispatch.
A plan maps each sequence to the number of its uncomputed tokens to compute, so prefill, decode and
recompute after preemption are the same thing. Out of blocks in decode: preempt the youngest
sequence (its blocks return; it recomputes later). A sequence alone in the unit that still does not
fit finishes with an error, so the loop never spins. A sequence is in at most one dispatch at a time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from services.worker.engine.block_manager import BlockManager, LLMBlocks
from services.worker.engine.sequence import Sequence, SeqStatus


@dataclass
class Dispatch:
    """One job's batch: plan[seq] tokens to compute for each seq (insertion order = batch order)."""

    llm: str
    kind: str  # "prefill" | "decode"
    plan: dict[Sequence, int] = field(default_factory=dict)


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_prefill_tokens: int):
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: dict[str, deque[Sequence]] = {}
        self.running: dict[str, list[Sequence]] = {}
        self._rr = 0
        self.num_preemptions = 0
        self.finished: list[Sequence] = []  # finished since the engine last drained this

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

    def finish(self, seq: Sequence, reason: str, error: str = "") -> None:
        seq.finish(reason, error)
        self.finished.append(seq)
        if not seq.in_flight:
            self._drop(seq)

    def _drop(self, seq: Sequence) -> None:
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

    # ---- one round --------------------------------------------------------------------------
    def schedule(self, busy: frozenset = frozenset()) -> list[Dispatch]:
        """Plan this round's dispatches; busy holds (llm, kind) jobs that are still running."""
        names = list(self.waiting)
        if not names:
            return []
        self._rr = (self._rr + 1) % len(names)
        order = names[self._rr:] + names[:self._rr]
        out, hold = [], False
        for name in order:
            if (name, "prefill") not in busy:
                d, cut = self._prefill(name)
                hold |= cut
                if d.plan:
                    out.append(d)
        if not hold:
            planned = {s for d in out for s in d.plan}
            for name in order:
                if (name, "decode") not in busy:
                    d = self._decode(name, planned)
                    if d.plan:
                        out.append(d)
        for d in out:
            for s in d.plan:
                s.in_flight = True
        return out

    def _prefill(self, name: str) -> tuple[Dispatch, bool]:
        """FCFS prefill batch of one LLM; also True when waiting work that fits was cut by the budget."""
        view, d, budget = self.blocks[name], Dispatch(name, "prefill"), self.max_prefill_tokens
        running = self.running[name]
        cands = [s for s in running if s.is_prefill and not s.in_flight] + list(self.waiting[name])
        for seq in cands:
            if seq.status is not SeqStatus.RUNNING and len(running) >= self.max_num_seqs:
                break
            if budget <= 0:
                return d, view.can_append(seq, min(seq.num_uncomputed_tokens, self.max_prefill_tokens))
            n = min(seq.num_uncomputed_tokens, budget)
            if not view.append(seq, n, ignore_quota=not running and not d.plan):
                break
            self._admit(seq)
            d.plan[seq] = n
            budget -= n
        return d, False

    def _admit(self, seq: Sequence) -> None:
        if seq.status is not SeqStatus.RUNNING:
            self.waiting[seq.llm].remove(seq)
            self.running[seq.llm].append(seq)
            seq.status = SeqStatus.RUNNING

    def _decode(self, name: str, planned: set[Sequence]) -> Dispatch:
        """One decode token for each running sequence of the LLM (oldest first); adds to planned."""
        d = Dispatch(name, "decode")
        for seq in sorted(self.running[name], key=lambda s: s.arrival):
            if seq.in_flight or seq in planned or seq.is_prefill or seq.status is not SeqStatus.RUNNING:
                continue
            if self._grow(seq, planned):
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
            victim = self._victim(seq, view, planned, lone)
            if victim is None:
                if not any(s.block_table for s in self.all_seqs() if s is not seq):
                    self.finish(seq, "error", "the sequence does not fit in the KV pool")
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
        self.num_preemptions += 1

    # ---- results ----------------------------------------------------------------------------
    def complete(self, d: Dispatch, token_ids: list[int | None]) -> list[Sequence]:
        """Apply a returned dispatch; returns the live sequences that sampled a new token."""
        sampled = []
        for (seq, n), tok in zip(d.plan.items(), token_ids):
            seq.in_flight = False
            if seq.is_finished:  # aborted while in flight: its blocks return only now
                self._drop(seq)
                continue
            seq.num_computed_tokens += n
            if seq.num_computed_tokens == seq.num_tokens and tok is not None:
                seq.output_token_ids.append(tok)
                sampled.append(seq)
        return sampled

    def fail(self, d: Dispatch, error: str) -> None:
        """The dispatch's job failed: finish each of its sequences with the error."""
        for seq in d.plan:
            seq.in_flight = False
            if seq.is_finished:
                self._drop(seq)
            else:
                self.finish(seq, "error", error)
