"""The placer's uncapped objective: how much load a placement's layout can carry.

The placement objective is capped at the offered load (sum of min(throughput, rate)), so at a low
load every policy ties. `capacity_scale` asks the question a capacity planner asks instead: the
largest common scale s of all rates at which the layout, re-estimated at rates x s (same units, same
LLMs on them, shares and batches re-derived), still serves at least `served` of every LLM's rate.
"""

from __future__ import annotations

import math
from typing import Callable

from .placement import Placement
from .search import PlacementError, Planner


def serves(planner: Planner, placement: Placement, served: float) -> bool:
    try:
        est = planner.rescore(placement)
    except PlacementError:
        return False
    return all(m.est_throughput >= served * m.rate - 1e-9 for u in est.units for m in u.llms)


def capacity_scale(planner_at: Callable[[float], Planner], placement: Placement, served: float = 0.99,
                   lo: float = 1 / 64, hi: float = 64.0, steps: int = 24) -> float:
    """Largest s in [lo, hi] (bisection on log s) at which serves(planner_at(s), placement); 0 if even lo fails."""
    if not serves(planner_at(lo), placement, served):
        return 0.0
    if serves(planner_at(hi), placement, served):
        return hi
    a, b = math.log(lo), math.log(hi)
    for _ in range(steps):
        mid = (a + b) / 2
        a, b = (mid, b) if serves(planner_at(math.exp(mid)), placement, served) else (a, mid)
    return math.exp(a)
