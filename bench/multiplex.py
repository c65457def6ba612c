"""MuxServe vs spatial partitioning vs temporal multiplexing, measured end to end on this machine.

One seeded request list (bench/workload.py: popularity ~ (i+1)^-alpha over a big popular LLM and a
small one, Poisson arrivals, chat-like lengths fixed per request with ignore_eos) is replayed through
the router's public gRPC API of a whole mesh started with `muxserve up`, once per policy, on the same
models and cores. The SLO base of each model is its latency alone on its spatial unit, measured in the
same run (the spatial mesh, one request at a time, before its replay). Reports per policy: completed
requests, throughput (completed / makespan, the paper's measure), output tokens/s, TTFT and TPOT
p50/p99, p99 latency over all requests, SLO attainment at scales 1-20, the placer's plan and estimate,
the CPU seconds each service (router, worker, its job processes, placer, memmgr, redis) and the client
spent per replay and per 1,000 output tokens (Linux /proc); the ratios muxserve/spatial and
muxserve/temporal (with --repeats, per repeat and their range); with --sweep, the highest rate at which 99% of
requests meet the scale-8 SLO. The placer plans with the host CPU per token (placer.host_cpu_ms_per_token)
that a burst of requests from another seed measured on the spatial mesh first. Writes results.json and
multiplex.png to --out.

    python bench/multiplex.py                          # 2 LLMs, alpha 1.9, 24 req/s, 240 requests
    python bench/multiplex.py --rate 16 --requests 200 --alpha 1.9
    python bench/multiplex.py --sweep 4,8,12,16 --requests 240   # + the rate at 99% SLO (scale 8)
    python bench/multiplex.py --big hidden_size=1024,num_layers=12,num_heads=16,num_kv_heads=16,intermediate_size=2816 \
        --rate 6 --sweep 2,3,4 --requests 160       # a 6x bigger popular model (docs/benchmarks.md, session 17)
    python bench/multiplex.py --resimulate docs/results/multiplex-2026-12-01-s9.json --out /tmp/resim
                                                       # the simulator again on a saved run (no mesh)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from muxserve import workload  # noqa: E402
from muxserve.netutil import free_ports  # noqa: E402
from services.worker.config import METRICS_PORT_OFFSET  # noqa: E402
from proctime import services_cpu_s  # noqa: E402
from multiplex_report import build_report, draw, per_model_lines, validation_lines  # noqa: E402
from multiplex_sim import add_simulated  # noqa: E402
from multiplex_models import MODELS, SHAPE_KEYS, model_shapes, prepare_models  # noqa: E402


def write_config(work: Path, policy: str, rates: dict[str, float], cost: Path, num_blocks: int,
                 lens: tuple[float, float], host_ms: float = 0.0, engine: dict | None = None) -> Path:
    import yaml

    ports = free_ports(("router", "placer", "memmgr", "worker", "redis"),  # worker i: port + i, metrics above
                       spans={"worker": (2, (0, METRICS_PORT_OFFSET))})
    cfg = {"redis_url": f"redis://127.0.0.1:{ports['redis']}/0",
           "models": [{"name": n, "path": str(work / n), "rate": round(r, 4)} for n, r in rates.items()],
           "cluster": {"device": "cpu", "nodes": 1, "devices_per_node": 2},
           "router": {"host": "127.0.0.1", "port": ports["router"], "http_port": -1},
           "placer": {"host": "127.0.0.1", "port": ports["placer"], "cost_table": str(cost),
                      "policy": policy.split("#")[0],
                      "interval_s": 3600, "avg_prompt_len": lens[0], "avg_output_len": lens[1],
                      "host_cpu_ms_per_token": host_ms},
           "memmgr": {"host": "127.0.0.1", "port": ports["memmgr"]},
           "worker": {"host": "127.0.0.1", "port": ports["worker"], "kv": "local",
                      "engine": {"num_blocks": num_blocks, "job_mode": "process", **(engine or {})}}}
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


def run_policy(policy: str, args, work: Path, cost: Path, rates: list[float], lists: dict, need_base: bool):
    """One policy's mesh: plan, warm up, [host-term calibration and SLO base: spatial], every rate's replay."""
    config = policy_config(policy, args, work, cost)
    out = {"plan": plan(config), "runs": {}, "config": str(config), "num_blocks": args.num_blocks}
    with Mesh(config, work / f"{policy}.log") as mesh:
        asyncio.run(replay(mesh.address, lists[rates[0]][:4]))  # warm-up: every job has run once
        if args.host_cpu_ms is None:
            args.host_cpu_ms = out["host_cpu_ms"] = calibrate_host(mesh, calibration_list(args))
            print(f"  host CPU per token (calibration burst on {policy}): {args.host_cpu_ms:.3f} ms", file=sys.stderr)
            out["plan"] = same_layout(out["plan"], plan(policy_config(policy, args, work, cost)))
        if need_base:
            out["base"] = alone_latency(mesh.address, lists[args.rate], args.base_requests)
        out["cpu_s"] = {}
        for rate in rates:
            print(f"  {policy}: replaying {len(lists[rate])} requests at {rate} req/s", file=sys.stderr)
            out["runs"][rate], out["cpu_s"][rate] = accounted_replay(mesh, lists[rate])
    return out


def policy_config(policy: str, args, work: Path, cost: Path) -> Path:
    prior = dict(zip(MODELS, workload.popularity(len(MODELS), args.alpha)))
    return write_config(work, policy, {m: p * args.rate for m, p in prior.items()}, cost, args.num_blocks,
                        (args.prompt_mean, args.output_mean), args.host_cpu_ms or 0.0, engine_keys(args.engine, policy))


def accounted_replay(mesh: "Mesh", reqs: list[workload.Request]) -> tuple[list[dict], dict[str, float]]:
    """The replay's results and the CPU seconds each service (and this client) spent during it."""
    cpu0, client0 = services_cpu_s(mesh.proc.pid), time.process_time()
    runs = asyncio.run(replay(mesh.address, reqs))
    cpu1 = services_cpu_s(mesh.proc.pid)
    return runs, {k: round(v - cpu0.get(k, 0.0), 3) for k, v in cpu1.items()} | {
        "client": round(time.process_time() - client0, 3)}


def calibration_list(args) -> list[workload.Request]:
    """A burst at the headline rate from another seed than the replays' (never the requests compared)."""
    return workload.generate(list(MODELS), args.alpha, args.rate, args.calibration_requests, args.seed + 1000,
                             args.prompt_mean, args.output_mean, 384)


def calibrate_host(mesh: "Mesh", reqs: list[workload.Request]) -> float:
    """The mesh's CPU ms per output token outside its job processes (router, worker, placer, memmgr, redis
    and this client), measured on a burst that saturates the mesh: the placer's host term (estimator.py)."""
    runs, cpu = accounted_replay(mesh, reqs)
    return 1000 * sum(v for k, v in cpu.items() if k != "jobs") / max(sum(r["tokens"] for r in runs), 1)


def same_layout(ran: dict, estimated: dict) -> dict:
    """The plan re-estimated with the calibrated host term; the term must not change the layout the mesh runs."""
    def layout(p: dict) -> list:
        return [(u["devices"], u["mode"], [(m["name"], m["prefill_share"], m["decode_share"]) for m in u["llms"]])
                for u in p["units"]]

    if layout(ran) != layout(estimated):
        raise SystemExit(f"the host term changed the layout: ran {ran['units']}, re-planned {estimated['units']}")
    return estimated


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=24.0,
                    help="req/s over all models: the headline run, and the placer's prior (split by popularity)")
    ap.add_argument("--sweep", default="", help="more comma-separated rates to replay on the same meshes")
    ap.add_argument("--alpha", type=float, default=1.9)
    ap.add_argument("--big", default="", metavar="KEY=VALUE,...",
                    help="the big model's shape over the default, e.g. hidden_size=1024,num_layers=12,num_heads=16,"
                         "num_kv_heads=16,intermediate_size=2816 (keys: " + ", ".join(SHAPE_KEYS) + ")")
    ap.add_argument("--requests", type=int, default=240)
    ap.add_argument("--prompt-mean", type=float, default=64)
    ap.add_argument("--output-mean", type=float, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policies", default="spatial,muxserve,temporal",
                    help="placer policies; NAME#LABEL runs NAME again as its own mesh (with --engine NAME#LABEL:...)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run every policy's mesh this many times, interleaved; the report gives ratio ranges")
    ap.add_argument("--base-requests", type=int, default=6, help="alone requests per model for the SLO base")
    ap.add_argument("--num-blocks", type=int, default=24000, help="head-wise blocks of each worker's pool")
    ap.add_argument("--work", default="", help="folder for models, cost table, configs and logs (default: temp)")
    ap.add_argument("--cost-table", default="", help="use this cost table instead of profiling the models")
    ap.add_argument("--out", default="bench/results/multiplex")
    ap.add_argument("--simulate", action="store_true",
                    help="also serve each request list in the simulator (same plan, cost table, engine keys)")
    ap.add_argument("--resimulate", default="", metavar="RESULTS_JSON",
                    help="no mesh: simulate a saved run again (its request lists, plans and --work), report to --out")
    ap.add_argument("--no-host-term", action="store_true", help="simulate without the host CPU term")
    ap.add_argument("--host-cpu-ms", type=float, default=None,
                    help="the placer's placer.host_cpu_ms_per_token (the mesh's CPU per streamed token); default: "
                         "measured on the first mesh by a burst of --calibration-requests; 0 leaves it out")
    ap.add_argument("--calibration-requests", type=int, default=96,
                    help="requests of the host-term calibration burst (another seed, the headline rate)")
    ap.add_argument("--engine", action="append", default=[], metavar="[POLICY:]KEY=VALUE",
                    help="a worker.engine key for every policy's mesh, or for POLICY's only (repeatable), "
                         "e.g. muxserve#spin0:omp_spin_count=0")
    args = ap.parse_args(argv)
    if args.resimulate:
        return resimulate(Path(args.resimulate), args)
    work = Path(args.work or tempfile.mkdtemp(prefix="mux-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cost = prepare_models(work, Path(args.cost_table) if args.cost_table else None, model_shapes(args.big))
    rates = sorted({args.rate, *(float(x) for x in args.sweep.split(",") if x)})
    lists = make_lists(args, rates)
    policies = repeated([p for p in args.policies.split(",") if p], args.repeats)
    if "spatial" not in policies:
        raise SystemExit("the SLO base is measured on the spatial units: keep spatial in --policies")
    raw = {p: run_policy(p, args, work, cost, rates, lists, p == "spatial") for p in ["spatial"] + [
        p for p in policies if p != "spatial"]}
    if args.simulate:
        add_simulated(raw, lists, args, list(MODELS))
    return write_report(raw, lists, rates, args)


def repeated(policies: list[str], n: int) -> list[str]:
    """The policies n times over, interleaved (spatial, muxserve, temporal, spatial#r2, ...): each repeat runs
    as its own mesh on the same request lists, so the report can give each ratio's range over repeats."""
    return policies + [f"{p}#r{i}" for i in range(2, n + 1) for p in policies]


def engine_keys(items: list[str], policy: str) -> dict:
    """The --engine items that apply to `policy`, as {key: YAML value}: unscoped ones, those scoped to it and, for
    NAME#LABEL, those scoped to NAME."""
    import yaml

    keys = {}
    for item in items:
        scope, _, kv = item.rpartition(":") if ":" in item.split("=", 1)[0] else ("", "", item)
        key, sep, value = kv.partition("=")
        if not sep:
            raise SystemExit(f"--engine {item!r}: expected [POLICY:]KEY=VALUE")
        if scope in ("", policy, policy.split("#")[0]):  # NAME's keys reach NAME#LABEL too
            keys[key] = yaml.safe_load(value)
    return keys


def make_lists(args, rates: list[float]) -> dict:
    return {r: workload.generate(list(MODELS), args.alpha, r, args.requests, args.seed, args.prompt_mean,
                                 args.output_mean, 384) for r in rates}


def resimulate(path: Path, args) -> int:
    """The simulator on a saved run: the same request lists (regenerated from its arguments), plans and
    cost table (its --work folder must still hold the configs); the measured side is the saved one."""
    saved = json.loads(path.read_text())
    raw, old = saved["raw"], saved["report"]["args"]
    args.big = old.get("big", "")
    for key in ("rate", "sweep", "alpha", "requests", "prompt_mean", "output_mean", "seed", "policies", "work"):
        setattr(args, key, old[key])
    rates = sorted({args.rate, *(float(x) for x in args.sweep.split(",") if x)})
    for r in raw.values():  # JSON keys are strings
        r["runs"] = {float(k): v for k, v in r["runs"].items()}
        r["cpu_s"] = {float(k): v for k, v in r.get("cpu_s", {}).items()}
    args.simulate, lists = True, make_lists(args, rates)
    add_simulated(raw, lists, args, list(MODELS))
    return write_report(raw, lists, rates, args)


def write_report(raw: dict, lists: dict, rates: list[float], args) -> int:
    report = build_report(raw, lists, rates, args, list(MODELS))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"report": report, "raw": raw}, indent=1, default=str))
    draw(report, out / "multiplex.png")
    print(json.dumps(report["headline"], indent=1))
    print("\n".join(per_model_lines(report)))
    if args.simulate:
        print("\n".join(validation_lines(report)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
