"""simulate(placement, llms, requests, cost, cfg): a whole placement served on one virtual clock.

Discrete events: request arrivals, dispatch completions and ADBS quota rounds. At each instant every
event of that instant is applied first, then each unit touched plans its idle jobs' next batches
(what the engine's step does: apply what returned, dispatch again). A request goes to the unit
hosting its model with the fewest unfinished sequences of it (the router's least-loaded choice);
a model no unit hosts is an error. Deterministic: no wall clock, no randomness.

Returns one record per request in metrics.py's shape; a request still unfinished when nothing more
can happen (it never fit) is not completed.
"""

from __future__ import annotations

import heapq
import itertools

from services.placer.costmodel import CostTable
from services.placer.placement import Placement
from services.worker.engine.sequence import Sequence
from services.worker.engine.types import SamplingParams

from .unit import SimConfig, SimLLM, SimUnit

ARRIVE, DONE, ADAPT = 0, 1, 2


class _Clock:
    """The event heap of one simulation; `live` counts the events that are not ADBS rounds."""

    def __init__(self):
        self.heap: list = []
        self._order = itertools.count()
        self.live = 0  # arrivals and dispatches still in the heap (ADBS rounds stop when none are)

    def push(self, t: float, kind: int, payload) -> None:
        heapq.heappush(self.heap, (t, next(self._order), kind, payload))
        self.live += kind != ADAPT

    def pop_instant(self) -> tuple[float, list]:
        t = self.heap[0][0]
        out = []
        while self.heap and self.heap[0][0] == t:
            _, _, kind, payload = heapq.heappop(self.heap)
            self.live -= kind != ADAPT
            out.append((kind, payload))
        return t, out


def _record(req, seq: Sequence | None, end: float) -> dict:
    """metrics.py's record of `req`: finished by `seq` at `end`, or (seq None) not completed by `end`."""
    first = seq.first_token_time if seq is not None and seq.first_token_time else end
    tokens = len(seq.output_token_ids) if seq is not None else 0
    return {"rid": req.rid, "model": req.model, "start": req.arrival_s, "end": end, "latency": end - req.arrival_s,
            "ttft": first - req.arrival_s, "tpot": (end - first) / max(tokens - 1, 1), "tokens": tokens,
            "tokens_wanted": req.max_tokens, "completed": seq is not None and seq.finish_reason == "length"}


def simulate(placement: Placement, llms: dict[str, SimLLM], requests: list, cost: CostTable,
             cfg: SimConfig | None = None) -> list[dict]:
    """Serve `requests` (muxserve.workload.Request) on `placement`: one record per request, in order."""
    return Simulation(placement, llms, cost, cfg).run(requests)


class Simulation:
    """The units of a placement on one clock; `units` stay inspectable after `run` (quotas, preemptions)."""

    def __init__(self, placement: Placement, llms: dict[str, SimLLM], cost: CostTable,
                 cfg: SimConfig | None = None):
        self.cfg = cfg or SimConfig()
        self.units = [SimUnit(u, llms, cost, self.cfg) for u in placement.units]
        if self.cfg.device == "cpu":  # one machine: the mesh's host work takes whichever cores are free
            for u in self.units:
                u.peers = self.units

    def run(self, requests: list) -> list[dict]:
        hosts = {name: [u for u in self.units if name in u.llms] for name in {r.model for r in requests}}
        missing = sorted(n for n, us in hosts.items() if not us)
        if missing:
            raise ValueError(f"no unit of the placement hosts {missing}")
        clock, recs, pending, every = _Clock(), {}, {}, self.cfg.quota.adapt_interval_s
        for r in requests:
            clock.push(r.arrival_s, ARRIVE, r)
        if every > 0:
            clock.push(every, ADAPT, None)
        ids, now = itertools.count(), 0.0
        while clock.heap:
            now, events = clock.pop_instant()
            touched: list[SimUnit] = []
            for kind, payload in events:
                if kind == ARRIVE:
                    touched.append(_arrive(payload, now, hosts, pending, next(ids)))
                elif kind == DONE:
                    unit, d = payload
                    for seq in unit.complete(d, now):
                        recs[seq.request_id] = _record(pending.pop(seq.request_id), seq, now)
                    touched.append(unit)
                elif clock.live:
                    for u in self.units:
                        u.adapt_quotas()
                    touched += self.units
                    clock.push(now + every, ADAPT, None)
            for u in dict.fromkeys(touched):
                for duration, d in u.dispatch(now):
                    clock.push(now + duration, DONE, (u, d))
        for req in pending.values():  # never finished: nothing more could happen to them
            recs[req.rid] = _record(req, None, now)
        return [recs[r.rid] for r in requests]

    @property
    def preemptions(self) -> int:
        return sum(u.scheduler.num_preemptions for u in self.units)


def _arrive(req, now: float, hosts: dict, pending: dict, seq_id: int) -> SimUnit:
    unit = min(hosts[req.model], key=lambda u: len(u.scheduler.waiting[req.model])
               + len(u.scheduler.running[req.model]))
    pending[req.rid] = req
    unit.add(Sequence(seq_id, req.rid, req.model, list(req.prompt_ids),
                      SamplingParams(max_tokens=req.max_tokens, ignore_eos=True), arrival=now))
    return unit
