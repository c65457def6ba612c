"""What this machine's cores allow: the saturated throughput of one unit under each way of sharing it.

In-process (no mesh, no network), with the models and request list of bench/multiplex.py, ALL requests
queued at once (the unit is saturated until the last finishes), process jobs:
  spatial       each LLM on its own core(s), the two units running side by side
  temporal      both LLMs on all cores, one dispatch at a time (FCFS)
  muxserve      both LLMs on all cores, the shares the placer plans for them (`muxserve plan`)
  muxserve-1c   both LLMs on all cores, every job one core (prefill and decode side by side)
  muxserve-all  both LLMs on all cores, every job all cores (the muxserve scheduler, no overlap)
  muxserve-thread  as muxserve, with thread jobs (one process: torch's thread pool, no core rule)
Prints completed req/s (requests / makespan) of each, rounds interleaved, and the ratios to spatial
and temporal: the ceiling the end-to-end benchmark can reach on these cores.

    python bench/multiplex_cap.py [--requests 150] [--rounds 2] [--configs spatial,temporal,muxserve]
    python bench/multiplex_cap.py --omp-spin-count -1     # the job processes with libgomp's default spin
    python bench/multiplex_cap.py --background 0.15       # with two processes each taking 15% of a core
    python bench/multiplex_cap.py --big hidden_size=1024,num_layers=12,num_heads=16,num_kv_heads=16,intermediate_size=2816 \
        --requests 60 --num-blocks 60000                  # a 6x bigger popular model
"""

from __future__ import annotations

import argparse
from collections import defaultdict
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import multiplex  # noqa: E402
from muxserve import workload  # noqa: E402

from services.worker.engine.config import EngineConfig, LLMConfig  # noqa: E402
from services.worker.engine.engine import UnitEngine  # noqa: E402
from services.worker.engine.types import SamplingParams  # noqa: E402


def _busy(fraction: float, burst_s: float = 0.001) -> None:
    """Keep one core busy `fraction` of the time in bursts of burst_s (a stand-in for the mesh's own
    processes: router, worker loop, client), until killed."""
    while True:
        end = time.perf_counter() + burst_s
        while time.perf_counter() < end:
            pass
        time.sleep(burst_s * (1 - fraction) / fraction)


def background(fraction: float, n: int = 2) -> list:
    """n processes each busy `fraction` of a core (none when fraction is 0); terminate them when done."""
    import multiprocessing as mp

    procs = [mp.get_context("spawn").Process(target=_busy, args=(fraction,), daemon=True)
             for _ in range(n if fraction > 0 else 0)]
    for p in procs:
        p.start()
    return procs


def saturate(eng: UnitEngine, reqs: list[workload.Request]) -> float:
    """Queue every request at once, step until all finish; seconds."""
    t0 = time.monotonic()
    for r in reqs:
        eng.add_request(r.rid, r.model, prompt_token_ids=list(r.prompt_ids),
                        sampling=SamplingParams(max_tokens=r.max_tokens, ignore_eos=True))
    pending = {r.rid for r in reqs}
    while pending:
        for rid, ch in eng.step().items():
            if ch.finish_reason:
                pending.discard(rid)
    return time.monotonic() - t0


def unit(work: Path, models: list[str], cores: list[int], num_blocks: int, **kw) -> UnitEngine:
    kw.setdefault("job_mode", "process")
    eng = UnitEngine([LLMConfig(m, str(work / m)) for m in models],
                     EngineConfig(num_blocks=num_blocks, cores=cores, **kw))
    for m in models:  # warm: every job has run once
        eng.generate(m, [[5] * 8], SamplingParams(max_tokens=2))
    return eng


def run_spatial(work: Path, reqs, num_blocks: int, **kw) -> float:
    """Each LLM alone on one core, both units at once (two threads driving two engines)."""
    engines = [unit(work, [m], [i], num_blocks, **kw) for i, m in enumerate(multiplex.MODELS)]
    times = {}

    def drive(eng):
        name = next(iter(eng.llms))
        times[name] = saturate(eng, [r for r in reqs if r.model == name])
    threads = [threading.Thread(target=drive, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in engines:
        e.close()
    return max(times.values())


def run_shared(work: Path, reqs, num_blocks: int, busy: list | None = None, **kw) -> float:
    """One unit of both LLMs on both cores; appends [busy seconds, dispatches, ms per dispatch] per job to `busy`."""
    eng = unit(work, list(multiplex.MODELS), [0, 1], num_blocks, **kw)
    eng.busy_s.clear()  # not the warm-up's
    eng.dispatches.clear()
    try:
        return saturate(eng, reqs)
    finally:
        if busy is not None:
            busy.append({f"{llm}/{kind}": [round(s, 3), eng.dispatches[llm, kind], round(1e3 * s / eng.dispatches[llm, kind], 2)]
                         for (llm, kind), s in sorted(eng.busy_s.items())})
        eng.close()


def placer_shares(work: Path, cost: Path, alpha: float, rate: float, lens) -> dict[str, float]:
    prior = dict(zip(multiplex.MODELS, workload.popularity(len(multiplex.MODELS), alpha)))
    config = multiplex.write_config(work, "muxserve", {m: p * rate for m, p in prior.items()}, cost, 1, lens)
    (u,) = multiplex.plan(config)["units"]
    return {f"{l['name']}/{k}": min(l[f"{k}_share"], 1.0) for l in u["llms"] for k in ("prefill", "decode")
            if l[f"{k}_share"] > 0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=1.9)
    ap.add_argument("--rate", type=float, default=24.0, help="the placer's prior (as in bench/multiplex.py)")
    ap.add_argument("--configs", default="spatial,temporal,muxserve,muxserve-1c")
    ap.add_argument("--num-blocks", type=int, default=24000)
    ap.add_argument("--big", default="", metavar="KEY=VALUE,...", help="the big model's shape (bench/multiplex.py --big)")
    ap.add_argument("--work", default="")
    ap.add_argument("--cost-table", default="")
    ap.add_argument("--background", type=float, default=0.0,
                    help="two processes each busy this fraction of a core in 1 ms bursts during every run "
                         "(what the mesh's router, worker loop and client take from the jobs)")
    ap.add_argument("--omp-spin-count", type=int, default=None,
                    help="engine.omp_spin_count of the job processes (default: the engine's; -1: libgomp's)")
    args = ap.parse_args(argv)
    spin = {} if args.omp_spin_count is None else {"omp_spin_count": args.omp_spin_count}
    configs = [c for c in args.configs.split(",") if c]
    busy: dict[str, list] = defaultdict(list)  # config -> per round: seconds each job had a batch in flight
    work = Path(args.work or tempfile.mkdtemp(prefix="mux-cap-"))
    work.mkdir(parents=True, exist_ok=True)
    cost = multiplex.prepare_models(work, Path(args.cost_table) if args.cost_table else None,
                                    multiplex.model_shapes(args.big))
    reqs = workload.generate(list(multiplex.MODELS), args.alpha, 1000.0, args.requests, 0, 64, 32, 384)
    shares = placer_shares(work, cost, args.alpha, args.rate, (64, 32))
    one_core = {f"{m}/{k}": 0.5 for m in multiplex.MODELS for k in ("prefill", "decode")}
    all_cores = {job: 1.0 for job in one_core}
    def shared(name: str, **kw):
        return lambda: run_shared(work, reqs, args.num_blocks, busy[name], **kw, **spin)
    runs = {"spatial": lambda: run_spatial(work, reqs, args.num_blocks, **spin),
            "temporal": shared("temporal", mode="temporal"),
            "muxserve": shared("muxserve", compute_shares=shares),
            "muxserve-1c": shared("muxserve-1c", compute_shares=one_core),
            "muxserve-thread": shared("muxserve-thread", compute_shares=shares, job_mode="thread"),
            "muxserve-all": shared("muxserve-all", compute_shares=all_cores)}
    got: dict[str, list[float]] = {c: [] for c in configs}
    for r in range(args.rounds):
        for c in (configs if r % 2 == 0 else configs[::-1]):  # interleaved, alternating order
            hogs = background(args.background)
            try:
                got[c].append(len(reqs) / runs[c]())
            finally:
                for h in hogs:
                    h.terminate()
            print(f"round {r}: {c} {got[c][-1]:.2f} req/s", file=sys.stderr, flush=True)
    med = {c: statistics.median(v) for c, v in got.items()}
    out = {"requests": len(reqs), "background": args.background,
           "omp_spin_count": spin.get("omp_spin_count", EngineConfig.omp_spin_count), "placer_shares": shares,
           "req_per_s": {c: [round(x, 2) for x in v] for c, v in got.items()}, "job_busy_s_dispatches_ms": dict(busy)}
    for base in ("spatial", "temporal"):
        if base in med:
            out[f"vs_{base}"] = {c: round(med[c] / med[base], 3) for c in med}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
