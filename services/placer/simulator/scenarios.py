"""The paper's workloads and baselines, as placer inputs: LLM lists, rates, and the paper's spatial sizing.

- `synthetic(alpha, max_rate)`: 19 LLaMA LLMs (12 x 7B, 4 x 13B, 2 x 30B, 1 x 65B) on 4 x 8 A100-80GB,
  rate_i = max_rate x (i+1)^-alpha in that order (the 7B models the popular ones).
- `chatlmsys(condense)`: the 16 LLMs and rates of services/placer/data/chatlmsys-rates.json.
- `paper_spatial(scenario, cost)`: each LLM alone on the number of GPUs the paper gives its size.
  When those units do not pack onto the cluster (ChatLMSYS: 34 GPUs for 32), the least popular LLM
  whose unit is larger than the fewest devices that hold it is halved, until they pack.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from services.placer.config import DATA_DIR, PlacerConfig
from services.placer.costmodel import CostTable
from services.placer.llmspec import LLMSpec, spec_from_size
from services.placer.placement import Placement
from services.placer.search import Planner
from services.placer.service import make_planner
from services.placer.spatial import pack

SYNTHETIC_SIZES = ["llama-7b"] * 12 + ["llama-13b"] * 4 + ["llama-30b"] * 2 + ["llama-65b"]
PAPER_GPUS = {"llama-7b": 1, "llama-13b": 1, "llama-30b": 4, "llama-65b": 8}
CHATLMSYS_GPUS = {"llama-7b": 1, "llama-13b": 2, "llama-30b": 2, "llama-65b": 4}
A100_TABLE = DATA_DIR / "a100-llama-cost.json"


@dataclass
class Scenario:
    """One workload on one cluster: the LLMs (with their rates), lengths and the paper's spatial sizing."""

    name: str
    specs: list[LLMSpec]
    sizes: dict[str, str]  # LLM name -> llama size
    paper_gpus: dict[str, int]  # size -> GPUs per LLM in the paper's spatial baseline
    prompt_len: float = 161
    output_len: float = 337
    nodes: int = 4
    devices_per_node: int = 8

    @property
    def rates(self) -> dict[str, float]:
        return {s.name: s.rate for s in self.specs}

    def planner(self, cost: CostTable, max_replicas: int = 1) -> Planner:
        cfg = PlacerConfig(cost_table=str(A100_TABLE), avg_prompt_len=round(self.prompt_len),
                           avg_output_len=round(self.output_len), max_replicas=max_replicas)
        return make_planner(self.specs, {}, self.nodes, self.devices_per_node, cfg, cost)


def synthetic(alpha: float, max_rate: float) -> Scenario:
    specs, sizes = [], {}
    for i, size in enumerate(SYNTHETIC_SIZES):
        name = f"llm-{i}"
        specs.append(spec_from_size(name, max_rate * (i + 1) ** -alpha, size))
        sizes[name] = size
    return Scenario(f"alpha{alpha:g}-max{max_rate:g}", specs, sizes, PAPER_GPUS)


def chatlmsys(condense: int) -> Scenario:
    data = json.loads((DATA_DIR / "chatlmsys-rates.json").read_text())
    setting = next((s for s in data["settings"] if s["condense"] == condense), None)
    if setting is None:
        raise ValueError(f"no ChatLMSYS setting condensed by {condense}; "
                         f"have {sorted(s['condense'] for s in data['settings'])}")
    specs = [spec_from_size(m["name"], m["rate"], m["size"]) for m in setting["models"]]
    return Scenario(f"chatlmsys-{condense}", specs, {m["name"]: m["size"] for m in setting["models"]},
                    CHATLMSYS_GPUS, setting["avg_prompt_len"], setting["avg_output_len"],
                    data["cluster"]["nnodes"], data["cluster"]["ngpus_per_node"])


def paper_spatial(sc: Scenario, cost: CostTable) -> Placement:
    """The paper's spatial baseline: each LLM alone on its size's GPUs (shrunk as the docstring says),
    one unit per LLM (its own planner, without replicas, so each unit is estimated at the LLM's rate)."""
    planner = sc.planner(cost)
    units = {s.name: sc.paper_gpus[sc.sizes[s.name]] for s in sc.specs}
    by_popularity = sorted(units, key=lambda n: (sc.rates[n], n))
    while pack(units, sc.nodes, sc.devices_per_node) is None:
        name = next((n for n in by_popularity if units[n] > planner.min_devices[n]), None)
        if name is None:
            raise ValueError(f"{sc.name}: the paper's spatial units do not fit {sc.nodes}x{sc.devices_per_node}")
        units[name] //= 2
    return planner.place("spatial", pack(units, sc.nodes, sc.devices_per_node))


def same_colocation_temporal(placement: Placement) -> Placement:
    """The paper's temporal multiplexing baseline: `placement`'s units and colocation unchanged, every unit
    run one job at a time (mode temporal, FCFS across its LLMs, every share 1.0)."""
    d = placement.to_dict()
    d["policy"] = "temporal"
    for u in d["units"]:
        u["mode"] = "temporal"
        for llm in u["llms"]:
            llm["prefill_share"] = llm["decode_share"] = 1.0
    return Placement.from_dict(d)
