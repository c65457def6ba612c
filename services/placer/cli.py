"""`muxserve plan` and `muxserve profile` (wired by muxserve/cli.py).

plan validates the config as every service does (model entries may name `size: llama-7b` instead of a `path`),
plans with the config's prior rates, and prints the placement as text or JSON (with --capacity,
also "capacity_scale": the largest common scale of the rates its layout still serves, capacity.py;
with --simulate S, the search's final candidates are served S seconds each in the simulator and the
one with the highest steady throughput wins, simulator/choose.py):
{"policy", "objective", "total_rate", "units": [{"unit_id", "devices", "mode", "est_throughput",
"llms": [{"name", "prefill_share", "decode_share", "rate", "est_throughput", "batch"}]}]}.
Errors (bad config, an LLM too large for any unit, an empty cluster, a cost table without the
model) print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from muxserve import config as mconfig
from muxserve.config import ConfigError

from .config import POLICIES, PlacerConfig
from .capacity import capacity_scale
from .analytic import build_cost
from .costmodel import CostModelError, CostTable
from .llmspec import load_specs
from .placement import Placement
from .search import PlacementError
from .service import make_planner


def load_plan_inputs(config_path: str, policy: str | None, cost_table: str | None):
    """(specs, nodes, devices_per_node, PlacerConfig, CostTable) from a config file (models may be given by
    `size` alone here)."""
    path = Path(config_path)
    mesh = mconfig.load(path, serve=False)
    dpn = mesh.settings.cluster.devices_per_node or 1  # plan: 1 device per node unless the config says
    mesh.cluster = replace(mesh.cluster, devices_per_node=dpn)
    section = mesh.section("placer").model_copy(update={"policy": policy} if policy else {})
    cfg = PlacerConfig.from_section(section, mesh, path.parent)
    specs = load_specs(mesh.raw, path.parent)
    cost = build_cost(CostTable.load(cost_table or cfg.cost_table_path), specs, mesh.cluster.device, cfg.gpu,
                      cfg.probe_cache)
    return specs, mesh.cluster.nodes, dpn, cfg, cost


def format_text(p: Placement, seconds: float) -> str:
    lines = [f"policy {p.policy}: objective {p.objective:.3f} of {p.total_rate:.3f} req/s, "
             f"{len(p.units)} units, planned in {seconds:.2f}s"]
    for u in p.units:
        lines.append(f"  {u.unit_id} devices {u.devices} ({u.mode}, {u.est_throughput:.3f} req/s)")
        for m in u.llms:
            lines.append(f"    {m.name}: rate {m.rate:.3f} est {m.est_throughput:.3f} req/s, "
                         f"prefill {m.prefill_share:.2f} decode {m.decode_share:.2f} batch {m.batch}")
    return "\n".join(lines)


def plan_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="muxserve plan", description="print the placement for a config")
    ap.add_argument("--config", required=True)
    ap.add_argument("--policy", choices=POLICIES, default=None, help="default: the config's placer.policy")
    ap.add_argument("--cost-table", default=None, help="JSON cost table (default: the config's)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--capacity", action="store_true",
                    help="also the uncapped objective: the largest scale of all rates the layout still serves")
    ap.add_argument("--simulate", type=float, default=0.0, metavar="S",
                    help="choose among the search's final candidates by serving S seconds of traffic in the simulator")
    args = ap.parse_args(argv)
    try:
        specs, nodes, dpn, cfg, cost = load_plan_inputs(args.config, args.policy, args.cost_table)
        t0 = time.perf_counter()
        planner = make_planner(specs, {}, nodes, dpn, cfg, cost)
        placement = _by_simulation(planner, specs, cfg, cost, args) if args.simulate > 0 else planner.plan(cfg.policy)
        seconds = time.perf_counter() - t0
        capacity = capacity_scale(lambda x: make_planner(specs, {m.name: m.rate * x for m in specs}, nodes, dpn,
                                                         cfg, cost), placement) if args.capacity else None
    except (ConfigError, CostModelError, PlacementError, ValueError, KeyError) as e:
        print(f"muxserve plan: error: {e}", file=sys.stderr)
        return 2
    d = placement.to_dict()
    d.pop("version")
    if capacity is not None:
        d["capacity_scale"] = round(capacity, 4)
    text = format_text(placement, seconds) + (f"\n  capacity: every rate x {capacity:.3f}" if capacity is not None else "")
    print(json.dumps(d, indent=1) if args.json else text)
    return 0


def _by_simulation(planner, specs, cfg: PlacerConfig, cost: CostTable, args) -> Placement:
    from .simulator import sim_llms
    from .simulator.choose import by_simulation
    from .simulator.cli import sim_config

    mesh = mconfig.load(args.config, serve=False)
    chosen, _ = by_simulation(planner.candidates(cfg.policy), sim_llms(specs), cost, sim_config(mesh, cfg),
                              (cfg.avg_prompt_len, cfg.avg_output_len), args.simulate)
    return chosen


def profile_main(argv: list[str]) -> int:
    from .profiler import main as profiler_main

    return profiler_main(argv)
