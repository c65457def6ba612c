"""The simulator in the placer's loop: pick among the search's final candidates by serving them.

`by_simulation(candidates, ...)` serves one seeded request list (the planned rates, `duration_s` of
arrivals) on every candidate and keeps the one with the highest steady throughput; candidates within
`tie` of the best are ranked by SLO attainment at scale 8 (base: each LLM alone on its unit of the
first candidate). Costs one simulation per candidate, so it is an offline step (`muxserve plan
--simulate S`, bench/simulate_paper.py's `muxserve-sim`), not the placer's periodic re-plan.
"""

from __future__ import annotations

from muxserve import workload
from services.placer.costmodel import CostTable
from services.placer.placement import Placement

from . import metrics
from .run import Simulation
from .unit import SimConfig, SimLLM


def alone_base(placement: Placement, cost: CostTable, llms: dict[str, SimLLM], lens) -> dict:
    """Each LLM alone at batch 1 on its unit of `placement`, whole share: TTFT and mid-output TPOT."""
    base = {}
    for u in placement.units:
        for m in u.llms:
            key, n = llms[m.name].cost_key, len(u.devices)
            base.setdefault(m.name, {"ttft": cost.prefill_ms(key, n, 1.0, 1, lens[0]) / 1000,
                                     "tpot": cost.decode_ms(key, n, 1.0, 1, lens[0] + lens[1] / 2) / 1000})
    return base


def by_simulation(candidates: list[Placement], llms: dict[str, SimLLM], cost: CostTable, cfg: SimConfig,
                  lens: tuple[float, float], duration_s: float = 30.0, seed: int = 1,
                  tie: float = 0.01) -> tuple[Placement, list[dict]]:
    """(the chosen candidate, each candidate's summary in order)."""
    reqs = workload.generate_rates({n: m.rate for n, m in llms.items()}, duration_s, seed, *lens)
    base = alone_base(candidates[0], cost, llms, lens)
    scores = [metrics.summarize(Simulation(p, llms, cost, cfg).run(reqs), base, list(llms)) for p in candidates]
    best = max(s["steady_throughput_rps"] for s in scores)
    close = [i for i, s in enumerate(scores) if s["steady_throughput_rps"] >= (1 - tie) * best]
    return candidates[max(close, key=lambda i: scores[i]["slo"][8])], scores
