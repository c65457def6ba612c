"""`muxserve simulate`: a config's placement (or a paper preset) served in the simulator.

    muxserve simulate --config FILE [--policy P] [--duration 60] [--seed 0] [--cv 1] [--json]
    muxserve simulate --preset synthetic --alpha 2.1 --max-rate 40 [--policy P]
    muxserve simulate --preset chatlmsys --condense 1600

With --config: the placer plans the config's models at their prior rates (`placer` section and
cost table as `muxserve plan` reads them); requests arrive per model at those rates (Poisson, or
Gamma with --cv), lengths around placer.avg_prompt_len / avg_output_len; units run with the
config's engine keys (worker.engine: block_size, max_num_seqs, max_prefill_tokens,
overload_allowance, num_blocks, spread_cores, decode_deadline_scale) and memmgr.quota. A preset uses the paper's workload on 4 x 8
A100-80GB with the A100 table; --policy spatial-paper is the paper's spatial sizing there.
Prints per-policy throughput, SLO attainment (base: each model alone at batch 1 on its own unit
of the plan) and latency percentiles; errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from muxserve import workload
from muxserve import config as mconfig
from muxserve.config import ConfigError
from services.memmgr.config import MemmgrConfig
from services.placer.costmodel import CostModelError, CostTable
from services.placer.search import PlacementError
from services.placer.service import make_planner

from . import metrics, scenarios, sim_llms
from .choose import alone_base
from .run import Simulation
from .unit import SimConfig

ENGINE_KEYS = ("block_size", "max_num_seqs", "max_prefill_tokens", "overload_allowance", "num_blocks", "spread_cores",
               "decode_deadline_scale")


def sim_config(mesh, pcfg) -> SimConfig:
    """The simulator's settings from a mesh config: device, memory, engine keys, memmgr's ADBS policy."""
    engine = mesh.section("worker").engine.model_dump(exclude_unset=True, exclude_none=True)
    return SimConfig(device=mesh.cluster.device,
                     device_bytes=pcfg.device_memory_gb * 2**30, memory_utilization=pcfg.memory_utilization,
                     quota=MemmgrConfig.from_section(mesh.section("memmgr")).quota,
                     **{k: type(getattr(SimConfig, k))(engine[k]) for k in ENGINE_KEYS if k in engine})


def _from_config(args):
    from services.placer.cli import load_plan_inputs

    specs, nodes, dpn, pcfg, cost = load_plan_inputs(args.config, None, args.cost_table)
    if args.max_replicas:
        pcfg = dataclasses.replace(pcfg, max_replicas=args.max_replicas)
    sim = sim_config(mconfig.load(args.config, serve=False), pcfg)
    planner = make_planner(specs, {}, nodes, dpn, pcfg, cost)
    lens = (pcfg.avg_prompt_len, pcfg.avg_output_len)
    return specs, planner, cost, sim, lens, args.policy or pcfg.policy, None


def _from_preset(args):
    cost = CostTable.load(args.cost_table or scenarios.A100_TABLE)
    sc = scenarios.chatlmsys(args.condense) if args.preset == "chatlmsys" else \
        scenarios.synthetic(args.alpha, args.max_rate)
    planner = sc.planner(cost, args.max_replicas or 1)
    return sc.specs, planner, cost, SimConfig(), (sc.prompt_len, sc.output_len), args.policy or "muxserve", sc


def simulate_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="muxserve simulate", description="serve a placement in the simulator")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--config")
    src.add_argument("--preset", choices=("synthetic", "chatlmsys"))
    ap.add_argument("--alpha", type=float, default=2.1)
    ap.add_argument("--max-rate", type=float, default=40.0)
    ap.add_argument("--condense", type=int, default=1600)
    ap.add_argument("--policy", default=None, help="muxserve | temporal | spatial (| spatial-paper for presets)")
    ap.add_argument("--cost-table", default=None)
    ap.add_argument("--max-replicas", type=int, default=None,
                    help="placer.max_replicas (default: the config's; 1 for presets)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cv", type=float, default=1.0, help="arrival coefficient of variation (1: Poisson)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        specs, planner, cost, sim_cfg, lens, policy, sc = (_from_config if args.config else _from_preset)(args)
        if policy == "spatial-paper":
            if sc is None:
                raise PlacementError("spatial-paper needs --preset (the paper's GPUs per LLaMA size)")
            placement = scenarios.paper_spatial(sc, cost)
        else:
            placement = planner.plan(policy)
        llms = sim_llms(specs)
        reqs = workload.generate_rates({s.name: s.rate for s in specs}, args.duration, args.seed, *lens, cv=args.cv)
        if not reqs:
            raise ConfigError("no request arrives: every model's rate is 0 or --duration too short")
        sim = Simulation(placement, llms, cost, sim_cfg)
        base = alone_base(scenarios.paper_spatial(sc, cost) if sc else placement, cost, llms, lens)
        summary = metrics.summarize(sim.run(reqs), base, list(llms))
    except (ConfigError, CostModelError, PlacementError, ValueError, KeyError, OSError) as e:
        print(f"muxserve simulate: error: {e}", file=sys.stderr)
        return 2
    summary.update(policy=policy, estimate_rps=placement.objective, offered_rps=sum(s.rate for s in specs),
                   preemptions=sim.preemptions)
    print(json.dumps(summary, indent=1) if args.json else _text(summary))
    return 0


def _text(s: dict) -> str:
    return (f"policy {s['policy']}: {s['completed']}/{s['requests']} requests, {s['throughput_rps']:.2f} req/s "
            f"(completed / makespan; {s['steady_throughput_rps']:.2f} steady) of "
            f"{s['offered_rps']:.2f} offered (placer estimate {s['estimate_rps']:.2f}); SLO attainment "
            f"scale 8 {s['slo'][8]:.3f}, scale 4 {s['slo'][4]:.3f}; TTFT p50/p99 {s['ttft_p50']:.3f}/"
            f"{s['ttft_p99']:.3f} s; TPOT p50/p99 {1000 * s['tpot_p50']:.1f}/{1000 * s['tpot_p99']:.1f} ms; "
            f"{s['preemptions']} preemptions")
