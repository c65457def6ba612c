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
    """The event heap and the records of one simulation."""

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


def _record(req) -> dict:
    return {"rid": req.rid, "model": req.model, "start": req.arrival_s, "end": None, "first": None,
            "tokens": 0, "tokens_wanted": req.max_tokens, "completed": False}


def _finish(rec: dict, end: float) -> None:
    first = rec["first"] if rec["first"] is not None else end
    rec.update(end=end, latency=end - rec["start"], ttft=first - rec["start"],
               tpot=(end - first) / max(rec["tokens"] - 1, 1))


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

    def run(self, requests: list) -> list[dict]:
        hosts = {name: [u for u in self.units if name in u.llms] for name in {r.model for r in requests}}
        missing = sorted(n for n, us in hosts.items() if not us)
        if missing:
            raise ValueError(f"no unit of the placement hosts {missing}")
        clock, recs, every = _Clock(), {}, self.cfg.quota.adapt_interval_s
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
                    touched.append(_arrive(payload, now, hosts, recs, next(ids)))
                elif kind == DONE:
                    touched.append(_done(*payload, now, recs))
                elif clock.live:
                    for u in self.units:
                        u.adapt_quotas()
                    touched += self.units
                    clock.push(now + every, ADAPT, None)
            for u in dict.fromkeys(touched):
                for duration, d in u.dispatch():
                    clock.push(now + duration, DONE, (u, d))
        for rec in recs.values():
            if rec["end"] is None:
                _finish(rec, now)
        return [recs[r.rid] for r in requests]

    @property
    def preemptions(self) -> int:
        return sum(u.scheduler.num_preemptions for u in self.units)


def _arrive(req, now: float, hosts: dict, recs: dict, seq_id: int) -> SimUnit:
    unit = min(hosts[req.model], key=lambda u: len(u.scheduler.waiting[req.model])
               + len(u.scheduler.running[req.model]))
    recs[req.rid] = _record(req)
    unit.add(Sequence(seq_id, req.rid, req.model, list(req.prompt_ids),
                      SamplingParams(max_tokens=req.max_tokens, ignore_eos=True), arrival=now))
    return unit


def _done(unit: SimUnit, d, now: float, recs: dict) -> SimUnit:
    sampled, finished = unit.complete(d)
    for seq in sampled:
        rec = recs[seq.request_id]
        rec["tokens"] = seq.num_output_tokens
        if rec["first"] is None:
            rec["first"] = now
    for seq in finished:
        rec = recs[seq.request_id]
        rec["completed"] = seq.finish_reason == "length"
        _finish(rec, now)
    return unit
