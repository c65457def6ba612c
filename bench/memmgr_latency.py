"""memmgr: lease/release latency, and how often an engine's decode step waits on a memmgr RPC.

A real memmgr runs as its own OS process (`python -m muxserve.cli memmgr`, explicit pool).
1. latency: one session, one LLM; --rounds x (Lease n, then Release those ids) on a sync gRPC
   channel, as the worker's block sources call them; p50/p99 per call for n = 1 token block and n =
   one lease chunk (worker.leases.chunk_token_blocks token blocks), in head-wise blocks.
2. engine: a UnitEngine (the worker's AsyncUnitEngine, built by services/worker/kv.MemmgrKV: per-LLM
   KVBlockSources over memmgr's shared pool) serves --requests greedy requests over --llms copies of a
   random-weight Llama (popularity 1/(i+1)), all submitted at once. A decode dispatch "waited" when
   one of its block acquisitions had to lease from memmgr synchronously (the local free list was
   short); reported as a fraction of decode dispatches (issue 3's goal: < 1%), with prefill's for
   comparison and the time those acquisitions took.

    python bench/memmgr_latency.py                    # defaults below; one JSON line at the end
    python bench/memmgr_latency.py --requests 16 --rounds 500
    python bench/memmgr_latency.py --arrival-rate 16 --low 0   # no background refill: waits show up
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))] if xs else 0.0


def summary_us(xs: list[float]) -> dict:
    return {"p50_us": round(pct(xs, 50) * 1e6, 1), "p99_us": round(pct(xs, 99) * 1e6, 1),
            "mean_us": round(sum(xs) / max(len(xs), 1) * 1e6, 1), "n": len(xs)}


def start_memmgr(tmp: str, port: int, head_dim: int, num_blocks: int, block_size: int) -> subprocess.Popen:
    conf = {"models": [{"name": "unused", "path": tmp}],
            "memmgr": {"host": "127.0.0.1", "port": port, "block_size": block_size, "heartbeat_timeout_s": 10,
                       "pools": [{"head_dim": head_dim, "dtype": "float32", "num_blocks": num_blocks}],
                       "quota": {"adapt_interval_s": 0}, "integrity_interval_s": 0}}
    path = Path(tmp) / "memmgr.yaml"
    path.write_text(yaml.safe_dump(conf))
    log = open(Path(tmp) / "memmgr.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "muxserve.cli", "memmgr", "--config", str(path)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def latency(address: str, head_dim: int, layers: int, kv_heads: int, sizes: dict[str, int], rounds: int) -> dict:
    import grpc

    from muxserve.v1 import memmgr_pb2 as pb
    from muxserve.v1 import memmgr_pb2_grpc as pb_grpc
    from services.memmgr.auth import call_metadata

    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.MemmgrStub(ch)
        opened = stub.OpenSession(pb.OpenSessionRequest(worker_id="bench-latency"))
        sid, md = opened.session_id, call_metadata(None, opened.session_key)  # memmgr auth: the session's key
        stub.RegisterLLM(pb.RegisterLLMRequest(session_id=sid, llm=pb.LLMSpec(
            name="lat", num_layers=layers, num_kv_heads=kv_heads, head_dim=head_dim, dtype="float32", rate=1)),
            metadata=md)
        out = {}
        for label, n in sizes.items():
            lease, release = [], []
            for i in range(rounds + 20):  # the first 20 warm the channel up
                t0 = time.perf_counter()
                ids = stub.Lease(pb.LeaseRequest(session_id=sid, llm="lat", n=n), metadata=md).block_ids
                t1 = time.perf_counter()
                stub.Release(pb.ReleaseRequest(session_id=sid, llm="lat", block_ids=ids), metadata=md)
                t2 = time.perf_counter()
                if i >= 20:
                    lease.append(t1 - t0)
                    release.append(t2 - t1)
            out[label] = {"blocks": n, "lease": summary_us(lease), "release": summary_us(release)}
        stub.CloseSession(pb.SessionRef(session_id=sid), metadata=md)
    return out


def instrument(aeng, kv) -> dict:
    """Count decode/prefill dispatches and the ones whose block acquisitions waited on an RPC."""
    eng, c = aeng.engine, {"decode": [0, 0], "prefill": [0, 0], "waited_s": []}

    for kind in ("decode", "prefill"):
        orig = getattr(eng.scheduler, f"_{kind}")

        def run(name, *a, _orig=orig, _kind=kind):
            src = kv.sources.get(name)
            w0 = src.waits
            res = _orig(name, *a)
            d = res[0] if isinstance(res, tuple) else res
            if d.plan:
                c[_kind][0] += 1
                c[_kind][1] += src.waits > w0
            return res
        setattr(eng.scheduler, f"_{kind}", run)
    for name in eng.llms:
        src = kv.sources.get(name)

        def acquire(n, _src=src, _orig=src.acquire):
            w0, t0 = _src.waits, time.perf_counter()
            ids = _orig(n)
            if _src.waits > w0:
                c["waited_s"].append(time.perf_counter() - t0)
            return ids
        src.acquire = acquire
    return c


async def engine_run(address: str, path: str, args) -> dict:
    import torch

    from services.worker.config import LeaseConfig
    from services.worker.engine.config import EngineConfig, LLMConfig
    from services.worker.engine.types import SamplingParams
    from services.worker.kv import MemmgrKV
    from bench.engine_throughput import make_requests

    kv = MemmgrKV(address, "bench-engine", LeaseConfig(chunk_token_blocks=args.chunk, low_token_blocks=args.low,
                                                       high_token_blocks=args.high))
    llms = [LLMConfig(f"m{i}", path, rate=1.0 / (i + 1)) for i in range(args.llms)]
    cfg = EngineConfig(max_num_seqs=args.requests, max_prefill_tokens=args.prefill_tokens, job_mode=args.job_mode)
    aeng = await kv.create_engine(llms, cfg)
    counts = instrument(aeng, kv)
    reqs = make_requests(args.requests, args.seed, args.prompt, args.output, 384)
    weights = [1.0 / (i + 1) for i in range(args.llms)]
    picks = torch.multinomial(torch.tensor(weights), len(reqs), replacement=True,
                              generator=torch.Generator().manual_seed(args.seed))
    names = [llms[j].name for j in picks.tolist()]

    gaps = torch.distributions.Exponential(args.arrival_rate).sample((len(reqs),)).tolist() if args.arrival_rate else None

    async def one(i, ids, n):
        if gaps:
            await asyncio.sleep(sum(gaps[:i]))  # Poisson arrivals
        k = 0
        async for ch in aeng.generate(f"r{i}", names[i], prompt_token_ids=ids,
                                      sampling=SamplingParams(max_tokens=n, ignore_eos=True)):
            k += len(ch.token_ids)
        return k

    t0 = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(i, ids, n) for i, (ids, n) in enumerate(reqs))))
    seconds = time.perf_counter() - t0
    rpcs = sum(s.rpcs for s in kv.sources.by_llm.values())
    waits, calls = kv.sources.waits
    await aeng.close()
    await kv.close()
    dec, pre = counts["decode"], counts["prefill"]
    return {"llms": args.llms, "requests": args.requests, "arrival_rate": args.arrival_rate,
            "leases": {"chunk": args.chunk, "low": args.low, "high": args.high}, "tokens": tokens, "seconds": round(seconds, 2),
            "decode_dispatches": dec[0], "decode_waited": dec[1], "decode_wait_fraction": dec[1] / max(dec[0], 1),
            "prefill_dispatches": pre[0], "prefill_waited": pre[1], "acquires": calls, "acquires_waited": waits,
            "memmgr_rpcs": rpcs, "waited_acquire": summary_us(counts["waited_s"])}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2000, help="latency: lease+release rounds per size")
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--llms", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt", type=int, nargs=2, default=(16, 128))
    ap.add_argument("--output", type=int, nargs=2, default=(32, 160))
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--num-blocks", type=int, default=65536, help="memmgr pool, head-wise blocks")
    ap.add_argument("--chunk", type=int, default=8, help="worker.leases.chunk_token_blocks")
    ap.add_argument("--low", type=int, default=4, help="worker.leases.low_token_blocks")
    ap.add_argument("--high", type=int, default=24, help="worker.leases.high_token_blocks")
    ap.add_argument("--arrival-rate", type=float, default=0.0, help="Poisson arrivals, req/s (0: all at once)")
    ap.add_argument("--prefill-tokens", type=int, default=1024)
    ap.add_argument("--job-mode", default="thread", choices=("thread", "process"))
    ap.add_argument("--port", type=int, default=0, help="memmgr port (0: a free one)")
    args = ap.parse_args(argv)
    from muxserve.netutil import free_port
    from muxserve.serving import wait_serving
    from muxserve.tiny import write_tiny_checkpoint

    head_dim, bpt = args.hidden // args.heads, args.layers * args.kv_heads
    with tempfile.TemporaryDirectory() as tmp:
        path = str(write_tiny_checkpoint(Path(tmp) / "m", "llama", args.hidden, args.layers, args.heads,
                                         args.kv_heads, 2 * args.hidden, seed=0))
        port = args.port or free_port()
        proc = start_memmgr(tmp, port, head_dim, args.num_blocks, args.block_size)
        address = f"127.0.0.1:{port}"
        try:
            asyncio.run(wait_serving(address, 60))
            lat = latency(address, head_dim, args.layers, args.kv_heads,
                          {"1_token_block": bpt, "1_chunk": args.chunk * bpt}, args.rounds)
            for label, r in lat.items():
                print(f"{label:14s} ({r['blocks']:4d} blocks)  lease p50 {r['lease']['p50_us']:7.1f} us  "
                      f"p99 {r['lease']['p99_us']:7.1f} us   release p50 {r['release']['p50_us']:7.1f} us  "
                      f"p99 {r['release']['p99_us']:7.1f} us", flush=True)
            eng = asyncio.run(engine_run(address, path, args))
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"engine: {eng['tokens']} tokens in {eng['seconds']}s; decode dispatches {eng['decode_dispatches']}, "
          f"waited on memmgr {eng['decode_waited']} ({100 * eng['decode_wait_fraction']:.2f}%); prefill "
          f"{eng['prefill_waited']}/{eng['prefill_dispatches']}; memmgr RPCs {eng['memmgr_rpcs']}", flush=True)
    out = {"cpus": os.cpu_count(), "bpt": bpt, "block_size": args.block_size, "latency": lat, "engine": eng}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
