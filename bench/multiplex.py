"""MuxServe vs spatial partitioning vs temporal multiplexing, measured end to end on this machine.

One seeded request list (bench/workload.py: popularity ~ (i+1)^-alpha over a big popular LLM and a
small one, Poisson arrivals, chat-like lengths fixed per request with ignore_eos) is replayed through
the router's public gRPC API of a whole mesh started with `muxserve up`, once per policy, on the same
models and cores. The SLO base of each model is its latency alone on its spatial unit, measured in the
same run (the spatial mesh, one request at a time, before its replay). Reports per policy: completed
requests, throughput (completed / makespan, the paper's measure), output tokens/s, TTFT and TPOT
p50/p99, p99 latency over all requests, SLO attainment at scales 1-20, the placer's plan and estimate;
the ratios muxserve/spatial and muxserve/temporal; with --sweep, the highest rate at which 99% of
requests meet the scale-8 SLO. Writes results.json and multiplex.png to --out.

    python bench/multiplex.py                          # 2 LLMs, alpha 1.9, 24 req/s, 240 requests
    python bench/multiplex.py --rate 16 --requests 200 --alpha 1.9
    python bench/multiplex.py --sweep 4,8,12,16 --requests 240   # + the rate at 99% SLO (scale 8)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import workload  # noqa: E402

SCALES = list(range(1, 21))
MODELS = {  # name -> tiny-checkpoint shape (head_dim 64 both, so they can share one pool)
    "big": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=8, intermediate_size=1408, seed=1),
    "small": dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=4, intermediate_size=704, seed=2),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_models(work: Path, cost: Path | None) -> Path:
    """Write the checkpoints (once) and measure their cost table with this engine (muxserve profile)."""
    from muxserve.tiny import write_tiny_checkpoint

    for name, shape in MODELS.items():
        if not (work / name / "config.json").exists():
            write_tiny_checkpoint(work / name, "llama", **shape)
    if cost is not None:
        return cost
    cost = work / "cost.json"
    if not cost.exists():
        for name in MODELS:
            subprocess.run([sys.executable, "-m", "muxserve.cli", "profile", "--model", str(work / name),
                            "--name", name, "--out", str(cost), "--devices", "1,2", "--shares", "50,100",
                            "--batches", "1,4,8", "--seqs", "32,64,128,256", "--reps", "2"], check=True)
    return cost


def write_config(work: Path, policy: str, rates: dict[str, float], cost: Path, num_blocks: int,
                 lens: tuple[float, float]) -> Path:
    import yaml

    ports = {s: free_port() for s in ("router", "placer", "memmgr", "worker", "redis")}
    cfg = {"redis_url": f"redis://127.0.0.1:{ports['redis']}/0",
           "models": [{"name": n, "path": str(work / n), "rate": round(r, 4)} for n, r in rates.items()],
           "cluster": {"device": "cpu", "nodes": 1, "devices_per_node": 2},
           "router": {"host": "127.0.0.1", "port": ports["router"]},
           "placer": {"host": "127.0.0.1", "port": ports["placer"], "cost_table": str(cost), "policy": policy,
                      "interval_s": 3600, "avg_prompt_len": lens[0], "avg_output_len": lens[1]},
           "memmgr": {"host": "127.0.0.1", "port": ports["memmgr"]},
           "worker": {"host": "127.0.0.1", "port": ports["worker"], "kv": "local",
                      "engine": {"num_blocks": num_blocks, "job_mode": "process"}}}
    path = work / f"{policy}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def plan(config: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "muxserve.cli", "plan", "--config", str(config), "--json"],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


class Mesh:
    """`muxserve up` as a child process; up() waits for its "muxserve is up" line."""

    def __init__(self, config: Path, log: Path):
        self.config, self.log = config, log

    def __enter__(self) -> "Mesh":
        self.out = open(self.log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "muxserve.cli", "up", "--config", str(self.config)],
                                     stdout=subprocess.PIPE, stderr=self.out, text=True, cwd=ROOT)
        for line in self.proc.stdout:
            self.out.write(line)
            if "muxserve is up" in line:
                import yaml
                self.address = f"127.0.0.1:{yaml.safe_load(self.config.read_text())['router']['port']}"
                return self
        raise RuntimeError(f"muxserve up exited ({self.proc.wait()}); see {self.log}")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.out.close()


async def one(stub, req: workload.Request, t0: float) -> dict:
    from muxserve.v1 import router_pb2

    await asyncio.sleep(max(0.0, t0 + req.arrival_s - time.monotonic()))
    start, first, tokens, usage, status = time.monotonic(), None, 0, None, "ok"
    msg = router_pb2.GenerateRequest(model=req.model, prompt_token_ids=router_pb2.TokenIds(ids=req.prompt_ids),
                                     sampling=router_pb2.SamplingParams(max_tokens=req.max_tokens, ignore_eos=True))
    try:
        async for resp in stub.Generate(msg):
            tokens += len(resp.token_ids)
            if resp.token_ids and first is None:
                first = time.monotonic()
            if resp.finish_reason:
                usage = resp.usage
    except Exception as e:  # noqa: BLE001 - a failed request counts as not completed
        status = f"error: {e}"
    end = time.monotonic()
    done = status == "ok" and tokens == req.max_tokens
    return {"rid": req.rid, "model": req.model, "start": start - t0, "end": end - t0, "latency": end - start,
            "ttft": (first or end) - start, "tpot": (end - (first or end)) / max(tokens - 1, 1),
            "tokens": tokens, "completed": done, "status": status,
            "router_queue_s": usage.queue_time_s if usage else None}


async def replay(address: str, reqs: list[workload.Request]) -> list[dict]:
    import grpc

    from muxserve.v1 import router_pb2_grpc

    async with grpc.aio.insecure_channel(address) as ch:
        stub = router_pb2_grpc.RouterStub(ch)
        t0 = time.monotonic() + 0.5
        return list(await asyncio.gather(*(one(stub, r, t0) for r in reqs)))


def alone_latency(address: str, reqs: list[workload.Request], per_model: int) -> dict[str, dict]:
    """Each model alone on its (idle) spatial unit, one request at a time: median TTFT and TPOT."""
    base = {}
    for model in MODELS:
        mine = [r for r in reqs if r.model == model][:per_model]
        got = [asyncio.run(replay(address, [workload.Request(r.rid, r.model, 0.0, r.prompt_ids, r.max_tokens)]))[0]
               for r in mine]
        base[model] = {"ttft": statistics.median(g["ttft"] for g in got),
                       "tpot": statistics.median(g["tpot"] for g in got), "n": len(got)}
    return base


def slo_base(r: dict, base: dict) -> float:
    b = base[r["model"]]
    return b["ttft"] + b["tpot"] * max(r["tokens_wanted"] - 1, 0)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def summarize(results: list[dict], reqs: list[workload.Request], base: dict) -> dict:
    want = {r.rid: r.max_tokens for r in reqs}
    for r in results:
        r["tokens_wanted"] = want[r["rid"]]
    done = [r for r in results if r["completed"]]
    makespan = max(r["end"] for r in results) - min(r["start"] for r in results)
    lat = [r["latency"] if r["completed"] else float("inf") for r in results]
    slo = {s: sum(r["completed"] and r["latency"] <= s * slo_base(r, base) for r in results) / len(results)
           for s in SCALES}
    return {"requests": len(results), "completed": len(done), "makespan_s": makespan,
            "throughput_rps": len(done) / makespan, "output_tok_s": sum(r["tokens"] for r in done) / makespan,
            "ttft_p50": pct([r["ttft"] for r in done], 50), "ttft_p99": pct([r["ttft"] for r in done], 99),
            "tpot_p50": pct([r["tpot"] for r in done], 50), "tpot_p99": pct([r["tpot"] for r in done], 99),
            "p99_latency": pct(lat, 99), "slo": slo,
            "per_model_completed": {m: sum(r["model"] == m for r in done) for m in MODELS}}


def rate_at_slo(points: list[tuple[float, float]], target: float = 0.99) -> float:
    """Highest swept rate whose scale-8 attainment >= target (linear between the last pass and first miss)."""
    best = 0.0
    for (r0, a0), (r1, a1) in zip(points, points[1:] + [(None, None)]):
        if a0 < target:
            break
        best = r0
        if r1 is not None and a1 < target:
            best = r0 + (r1 - r0) * (a0 - target) / (a0 - a1)
            break
    return best


def run_policy(policy: str, args, work: Path, cost: Path, rates: list[float], lists: dict, need_base: bool):
    prior = dict(zip(MODELS, workload.popularity(len(MODELS), args.alpha)))
    config = write_config(work, policy, {m: p * args.rate for m, p in prior.items()}, cost, args.num_blocks,
                          (args.prompt_mean, args.output_mean))
    planned = plan(config)
    out = {"plan": planned, "runs": {}}
    with Mesh(config, work / f"{policy}.log") as mesh:
        asyncio.run(replay(mesh.address, lists[rates[0]][:4]))  # warm-up: every job has run once
        if need_base:
            out["base"] = alone_latency(mesh.address, lists[args.rate], args.base_requests)
        for rate in rates:
            print(f"  {policy}: replaying {len(lists[rate])} requests at {rate} req/s", file=sys.stderr)
            out["runs"][rate] = asyncio.run(replay(mesh.address, lists[rate]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=24.0,
                    help="req/s over all models: the headline run, and the placer's prior (split by popularity)")
    ap.add_argument("--sweep", default="", help="more comma-separated rates to replay on the same meshes")
    ap.add_argument("--alpha", type=float, default=1.9)
    ap.add_argument("--requests", type=int, default=240)
    ap.add_argument("--prompt-mean", type=float, default=64)
    ap.add_argument("--output-mean", type=float, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policies", default="spatial,muxserve,temporal")
    ap.add_argument("--base-requests", type=int, default=6, help="alone requests per model for the SLO base")
    ap.add_argument("--num-blocks", type=int, default=24000, help="head-wise blocks of each worker's pool")
    ap.add_argument("--work", default="", help="folder for models, cost table, configs and logs (default: temp)")
    ap.add_argument("--cost-table", default="", help="use this cost table instead of profiling the models")
    ap.add_argument("--out", default="bench/results/multiplex")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="mux-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cost = prepare_models(work, Path(args.cost_table) if args.cost_table else None)
    rates = sorted({args.rate, *(float(x) for x in args.sweep.split(",") if x)})
    vocab = 384
    lists = {r: workload.generate(list(MODELS), args.alpha, r, args.requests, args.seed, args.prompt_mean,
                                  args.output_mean, vocab) for r in rates}
    policies = [p for p in args.policies.split(",") if p]
    if "spatial" not in policies:
        raise SystemExit("the SLO base is measured on the spatial units: keep spatial in --policies")
    raw = {p: run_policy(p, args, work, cost, rates, lists, p == "spatial") for p in ["spatial"] + [
        p for p in policies if p != "spatial"]}
    report = build_report(raw, lists, rates, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"report": report, "raw": raw}, indent=1, default=str))
    draw(report, out / "multiplex.png")
    print(json.dumps(report["headline"], indent=1))
    return 0


def build_report(raw: dict, lists: dict, rates: list[float], args) -> dict:
    base = raw["spatial"]["base"]
    rep = {"args": vars(args), "cpu": os.cpu_count(), "base": base, "policies": {}}
    for p, r in raw.items():
        runs = {rate: summarize(r["runs"][rate], lists[rate], base) for rate in rates}
        rep["policies"][p] = {"estimate_rps": r["plan"]["objective"], "plan": [
            {"unit": u["unit_id"], "devices": u["devices"], "mode": u["mode"],
             "llms": {l["name"]: {"prefill": l["prefill_share"], "decode": l["decode_share"]} for l in u["llms"]}}
            for u in r["plan"]["units"]], "runs": runs,
            "rate_at_99pct_slo8": rate_at_slo([(rate, runs[rate]["slo"][8]) for rate in rates])}
    head = {"rate": args.rate}
    for p, v in rep["policies"].items():
        m = v["runs"][args.rate]
        head[p] = {"throughput_rps": round(m["throughput_rps"], 3), "estimate_rps": round(v["estimate_rps"], 3),
                   "completed": m["completed"], "slo8": round(m["slo"][8], 3), "p99_latency": round(m["p99_latency"], 2),
                   "ttft_p99": round(m["ttft_p99"], 3), "tpot_p99": round(m["tpot_p99"], 4),
                   "rate_at_99pct_slo8": round(v["rate_at_99pct_slo8"], 3)}
    mux = head.get("muxserve")
    for other in ("spatial", "temporal"):
        if mux and other in head:
            head[f"muxserve/{other}"] = {
                "throughput": round(mux["throughput_rps"] / head[other]["throughput_rps"], 3),
                "rate_at_slo": round(mux["rate_at_99pct_slo8"] / head[other]["rate_at_99pct_slo8"], 3)
                if head[other]["rate_at_99pct_slo8"] else None}
    rep["headline"] = head
    return rep


def draw(report: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib missing (pip install -e .[bench]): no plot", file=sys.stderr)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, c, b) = plt.subplots(1, 3, figsize=(15, 4))
    rate = report["headline"]["rate"]
    low = min(float(r) for r in next(iter(report["policies"].values()))["runs"])
    for p, v in report["policies"].items():
        runs = {float(r): m for r, m in v["runs"].items()}
        slo = runs[low]["slo"]
        a.plot(SCALES, [slo.get(s, slo.get(str(s))) for s in SCALES], marker="o", ms=3, label=p)
        rs = sorted(runs)
        c.plot(rs, [runs[r]["slo"].get(8, runs[r]["slo"].get("8")) for r in rs], marker="o", label=p)
    a.set(xlabel="SLO scale (x latency alone)", ylabel="SLO attainment", title=f"{low:g} req/s", ylim=(0, 1.02))
    c.axhline(0.99, color="grey", lw=0.8, ls="--")
    c.set(xlabel="offered req/s", ylabel="SLO attainment at scale 8", ylim=(0, 1.02), title="attainment vs rate")
    a.legend()
    c.legend()
    names = list(report["policies"])
    b.bar([n + " (measured)" for n in names],
          [{float(r): m for r, m in report["policies"][n]["runs"].items()}[rate]["throughput_rps"] for n in names])
    b.bar([n + " (placer)" for n in names], [report["policies"][n]["estimate_rps"] for n in names], alpha=0.5)
    b.set(ylabel="completed req/s", title=f"throughput at {rate:g} req/s")
    b.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
