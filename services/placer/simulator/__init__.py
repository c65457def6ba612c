"""The discrete-event simulator of a placement (issue 11): the engine's scheduler on a virtual clock.

`simulate` (run.py) serves a request list on a Placement with the cost table's latencies;
`sim_llms` turns the placer's LLMSpecs into what the simulator needs; metrics.py summarizes.
"""

from __future__ import annotations

from .run import Simulation, simulate
from .unit import SimConfig, SimLLM, SimUnit


def sim_llms(specs) -> dict[str, SimLLM]:
    """{name: SimLLM} from placer LLMSpecs."""
    return {s.name: SimLLM(s.name, s.cost_key, s.weight_bytes, s.kv_bytes_per_token, s.rate) for s in specs}


__all__ = ["SimConfig", "SimLLM", "SimUnit", "Simulation", "sim_llms", "simulate"]
