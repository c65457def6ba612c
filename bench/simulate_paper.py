"""The MuxServe paper's protocol in the simulator: muxserve vs temporal vs spatial at paper scale.

Workloads (services/placer/simulator/scenarios.py): the synthetic one (19 LLaMA LLMs on 4 x 8 A100-80GB,
rate_i = max_rate x (i+1)^-alpha, the 7B models the popular ones) for every alpha x max rate, and
ChatLMSYS (16 LLMs, each condense factor). Per workload, one seeded request list (per-model Poisson
arrivals over --duration seconds, ShareGPT-like lengths: log-normal around 161 / 337 tokens, ChatLMSYS
around its own means), served in the simulator (the engine's scheduler on a virtual clock, the A100
cost table) under four placements planned with the true rates:
  muxserve       the placer's MuxServe placement (spatial-temporal units, shares, quotas)
  muxserve-sim   the same search, its final candidates chosen by the simulator (on a request list of
                 another seed, so the choice never sees the list it is judged on)
  temporal       the paper's temporal baseline: muxserve's placement (same colocation, same units) with every
                 unit temporal (FCFS, one job at a time)
  temporal-search  this project's stronger temporal baseline: the placement search run for temporal units
  spatial-paper  each LLM alone on the paper's GPUs for its size
  spatial        this project's load-aware spatial baseline (idle GPUs go to the busiest LLMs)
All but spatial-paper may run an LLM that no single unit serves at its rate in up to --max-replicas
units (services/placer/replicas.py; 1 turns that off); the paper's spatial sizing has one unit per LLM.
Metrics: throughput = completed / makespan (and, beside it, the requests completed by the last
arrival steady: a finite list's drain weighs on the first), SLO attainment at scales 1-20 (base: the model alone at
batch 1 on its paper-spatial GPUs, from the cost table), TTFT / TPOT p50 / p99; with --slo-alpha, the
highest max rate at which 99% of requests meet the scale-8 SLO, per policy, from a ladder of rates.
Writes results.json, table.md and simulate_paper.png to --out.

    python bench/simulate_paper.py                       # the whole grid, ~minutes on 2 cores
    python bench/simulate_paper.py --alphas 2.1 --max-rates 40 --condense "" --duration 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from muxserve import workload  # noqa: E402
from services.placer.costmodel import CostTable  # noqa: E402
from services.placer.simulator import SimConfig, Simulation, metrics, scenarios, sim_llms  # noqa: E402
from services.placer.simulator.choose import alone_base, by_simulation  # noqa: E402

POLICIES = ("muxserve", "muxserve-sim", "temporal", "temporal-search", "spatial-paper", "spatial")
SEARCHED = {"muxserve": "muxserve", "temporal-search": "temporal", "spatial": "spatial"}  # policy -> planner policy


def scenario(key: tuple) -> scenarios.Scenario:
    return scenarios.chatlmsys(key[1]) if key[0] == "chatlmsys" else scenarios.synthetic(key[1], key[2])


def run_one(task: tuple) -> dict:
    """One (scenario, policy): plan, simulate, summarize."""
    key, policy, duration, seed, replicas = task
    t0 = time.process_time()
    cost = CostTable.load(scenarios.A100_TABLE)
    sc = scenario(key)
    planner = sc.planner(cost, replicas)
    paper = scenarios.paper_spatial(sc, cost)
    llms = sim_llms(sc.specs)
    if policy == "muxserve-sim":
        placement, _ = by_simulation(planner.candidates("muxserve"), llms, cost, SimConfig(),
                                     (sc.prompt_len, sc.output_len), min(duration, 30.0), seed + 1)
    elif policy == "temporal":
        placement = scenarios.same_colocation_temporal(planner.plan("muxserve"))
    else:
        placement = paper if policy == "spatial-paper" else planner.plan(SEARCHED[policy])
    reqs = workload.generate_rates(sc.rates, duration, seed, sc.prompt_len, sc.output_len)
    sim = Simulation(placement, llms, cost, SimConfig())
    base = alone_base(paper, cost, llms, (sc.prompt_len, sc.output_len))  # alone on its paper-spatial GPUs
    summary = metrics.summarize(sim.run(reqs), base, list(sc.rates))
    summary.pop("per_model")
    return {"key": list(key), "policy": policy, "offered_rps": sum(sc.rates.values()),
            "estimate_rps": placement.objective, "units": len(placement.units),
            "modes": sorted({u.mode for u in placement.units}), "preemptions": sim.preemptions,
            "cpu_s": time.process_time() - t0, **summary}


def tasks(args) -> list[tuple]:
    keys = [("synthetic", a, r) for a in args.alphas for r in args.max_rates]
    keys += [("chatlmsys", c) for c in args.condense]
    out = [(k, p, args.duration, args.seed, args.max_replicas) for k in keys for p in args.policies]
    if args.slo_alpha:
        out += [(("synthetic", args.slo_alpha, r), p, args.duration, args.seed, args.max_replicas)
                for r in args.slo_ladder if r not in args.max_rates or args.slo_alpha not in args.alphas
                for p in args.slo_policies]
    return out


def table(results: list[dict]) -> list[str]:
    """One row per workload: each policy's throughput (completed / makespan, and steady) with its
    scale-8 SLO attainment, then muxserve's and muxserve-sim's ratios: steady (makespan)."""
    by = {(tuple(r["key"]), r["policy"]): r for r in results}
    keys = sorted({tuple(r["key"]) for r in results}, key=lambda k: (k[0] != "synthetic", k[1:]))
    pairs = [(m, o) for m in ("muxserve", "muxserve-sim") for o in ("spatial-paper", "temporal", "temporal-search",
                                                                     "spatial")]
    lines = ["| workload | offered req/s | " + " | ".join(f"{p}: req/s, steady (SLO@8)" for p in POLICIES)
             + " | " + " | ".join(f"{m} / {o}" for m, o in pairs) + " |",
             "|" + " --- |" * (2 + len(POLICIES) + len(pairs))]
    for k in keys:
        got = {p: by.get((k, p)) for p in POLICIES}  # a policy not run on this workload shows "-"
        if got["muxserve"] is None:
            continue
        name = f"alpha {k[1]:g}, max {k[2]:g}" if k[0] == "synthetic" else f"chatlmsys x{k[1]}"
        cells = [f"{v['throughput_rps']:.1f}, {v['steady_throughput_rps']:.1f} ({v['slo'][8]:.2f})" if v else "-"
                 for v in got.values()]
        ratios = [f"{got[m]['steady_throughput_rps'] / got[o]['steady_throughput_rps']:.2f}x "
                  f"({got[m]['throughput_rps'] / got[o]['throughput_rps']:.2f}x)" if got[m] and got[o] else "-"
                  for m, o in pairs]
        lines.append(f"| {name} | {got['muxserve']['offered_rps']:.1f} | " + " | ".join(cells + ratios) + " |")
    return lines


def slo_rates(results: list[dict], alpha: float) -> dict:
    out = {}
    for p in {r["policy"] for r in results}:
        pts = sorted((r["key"][2], r["slo"][8]) for r in results
                     if r["key"][0] == "synthetic" and r["key"][1] == alpha and r["policy"] == p)
        out[p] = {"rate_at_99pct_slo8": metrics.rate_at_slo(pts), "points": pts}
    return out


def draw(results: list[dict], rates: dict, max_rates: list[float], path: Path) -> None:
    """Steady throughput vs alpha per policy, one panel per max rate; SLO attainment vs rate."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib missing (pip install -e .[bench]): no plot", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    color = {p: f"C{i}" for i, p in enumerate(POLICIES)}
    syn = [r for r in results if r["key"][0] == "synthetic"]
    fig, axes = plt.subplots(1, len(max_rates) + 1, figsize=(4 * (len(max_rates) + 1), 3.6))
    for ax, mr in zip(axes, max_rates):
        for p in POLICIES:
            pts = sorted((r["key"][1], r["steady_throughput_rps"]) for r in syn
                         if r["key"][2] == mr and r["policy"] == p)
            ax.plot([a for a, _ in pts], [t for _, t in pts], marker="o", color=color[p], label=p)
        ax.set(xlabel="alpha", ylabel="steady throughput (req/s)", title=f"most popular LLM at {mr:g} req/s")
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    for p in POLICIES:
        if p in rates:
            pts = rates[p]["points"]
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", color=color[p], label=p)
    ax.axhline(0.99, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="most popular LLM's rate (req/s)", ylabel="SLO attainment at scale 8", ylim=(0, 1.02),
           title="SLO attainment vs rate")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(results: list[dict], args, out: Path, wall: float) -> list[str]:
    """Write table.md, results.json and simulate_paper.png to `out`; returns the table's lines."""
    rates = slo_rates(results, args.slo_alpha) if args.slo_alpha else {}
    out.mkdir(parents=True, exist_ok=True)
    lines = table(results)
    if rates:
        lines += ["", f"alpha {args.slo_alpha:g}: highest max rate at 99% SLO attainment (scale 8): " + ", ".join(
            f"{p} {v['rate_at_99pct_slo8']:.1f}" for p, v in sorted(rates.items()))]
    lines += ["", f"wall {wall:.0f} s, {args.jobs} processes, duration {args.duration:g} s per workload"]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "from_json"},
                                                  "wall_s": wall, "results": results, "slo_rates": rates}, indent=1))
    draw(results, rates, args.max_rates, out / "simulate_paper.png")
    return lines


def floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alphas", type=floats, default=floats("0.7,0.9,1.3,1.7,2.1"))
    ap.add_argument("--max-rates", type=floats, default=floats("20,30,40,50"))
    ap.add_argument("--condense", type=lambda s: [int(x) for x in s.split(",") if x.strip()],
                    default=[500, 800, 1200, 1600, 2000])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals per workload (docs/benchmarks.md: why 60)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slo-alpha", type=float, default=2.1, help="alpha of the rate-at-99%%-SLO ladder (0: none)")
    ap.add_argument("--slo-ladder", type=floats, default=floats("5,10,15,20,30,40,50"))
    ap.add_argument("--slo-policies", type=lambda s: s.split(","),
                    default=["muxserve", "temporal", "spatial-paper", "spatial"])
    ap.add_argument("--policies", type=lambda s: [p for p in s.split(",") if p], default=list(POLICIES),
                    help="comma list of " + ", ".join(POLICIES))
    ap.add_argument("--max-replicas", type=int, default=4,
                    help="placer.max_replicas for every policy but spatial-paper (1: each LLM in one unit)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="bench/results/simulate_paper")
    ap.add_argument("--from-json", default="", help="redraw the table and plot from a results.json instead of running")
    args = ap.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        for r in saved["results"]:
            r["slo"] = {int(k): v for k, v in r["slo"].items()}  # JSON keys are strings
        print("\n".join(report(saved["results"], args, Path(args.out), saved.get("wall_s", 0.0))))
        return 0
    t0 = time.time()
    todo = tasks(args)
    with Pool(args.jobs) as pool:
        results = []
        for i, r in enumerate(pool.imap_unordered(run_one, todo), 1):
            results.append(r)
            print(f"[{i}/{len(todo)} {time.time() - t0:.0f}s] {r['key']} {r['policy']}: steady "
                  f"{r['steady_throughput_rps']:.1f} req/s, SLO@8 {r['slo'][8]:.3f}", file=sys.stderr)
    print("\n".join(report(results, args, Path(args.out), time.time() - t0)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
