"""Load with cancellations (issue 13, done-when 2): N concurrent streams over 3 LLMs through the router,
a fraction of them cancelled by the client mid-stream; zero lost, zero leaked blocks.

    python bench/cancel_load.py [--streams 200] [--cancel 0.25] [--tokens 64] [--out results.json]

Starts a mesh on free ports with the launcher's own code (redis-server, placer, memmgr, one worker per
unit, router) serving three tiny random-weight checkpoints (llama, qwen2, llama again with another seed),
sends every stream at once (token-id prompts, greedy, ignore_eos, `--tokens` each), cancels the chosen
quarter after its first chunk, and then checks:
- lost: a stream not cancelled that did not end with status OK, finish_reason "length" and exactly
  `--tokens` tokens (and usage saying so);
- leaked: memmgr's Stats once the load ends: capacity - free blocks (after the workers' idle release),
  sessions holding blocks, and memmgr's integrity check; each worker's running + waiting sequences.
Prints one JSON object (also written to --out): counts, wall time, output tokens/s, TTFT p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write_config(root: Path, ports: dict) -> Path:
    import yaml

    from muxserve.tiny import write_tiny_checkpoint

    models = []
    for name, arch, seed in (("llama-a", "llama", 1), ("qwen-b", "qwen2", 2), ("llama-c", "llama", 3)):
        path = write_tiny_checkpoint(root / name, arch, seed=seed)
        models.append({"name": name, "path": str(path), "rate": 1.0})
    conf = {"redis_url": f"redis://127.0.0.1:{ports['redis']}/0", "models": models,
            "cluster": {"device": "cpu", "nodes": 1, "devices_per_node": 2},
            **{s: {"host": "127.0.0.1", "port": ports[s]} for s in ("router", "placer", "memmgr", "worker")}}
    conf["memmgr"].update(block_size=8, pools=[{"head_dim": 16, "dtype": "float32", "num_blocks": 32768}])
    conf["worker"].update(metrics_port=-1, leases={"idle_release_s": 0.5, "sync_interval_s": 0.2})
    conf["placer"]["cost_table"] = profile(root, models)
    path = root / "mesh.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def profile(root: Path, models: list[dict]) -> str:
    """A small cost table of the three models on this machine (what `muxserve profile` measures)."""
    from services.placer.cli import profile_main

    out = root / "cost.json"
    for m in models:
        m["cost_key"] = m["name"]
        assert profile_main(["--model", m["path"], "--name", m["name"], "--out", str(out), "--devices", "1,2",
                             "--shares", "50,100", "--batches", "1,4", "--seqs", "16,64", "--reps", "1"]) == 0
    return str(out)


async def one(stub, model: str, i: int, tokens: int, cancel: bool) -> dict:
    import grpc

    from muxserve.v1 import router_pb2

    req = router_pb2.GenerateRequest(model=model, prompt_token_ids=router_pb2.TokenIds(ids=[3 + i % 200, 5, 7, 9]),
                                     sampling=router_pb2.SamplingParams(max_tokens=tokens, ignore_eos=True))
    t0, first, n, last = time.perf_counter(), None, 0, None
    call = stub.Generate(req, timeout=600)
    try:
        async for c in call:
            first = first or time.perf_counter()
            n += len(c.token_ids)
            last = c
            if cancel:
                call.cancel()
                return {"cancelled": True}
        ok = last is not None and last.finish_reason == "length" and n == tokens == last.usage.completion_tokens
        return {"cancelled": False, "ok": ok, "tokens": n, "ttft": first - t0, "why": "" if ok else str(last)}
    except grpc.aio.AioRpcError as e:
        if cancel and e.code() == grpc.StatusCode.CANCELLED:
            return {"cancelled": True}
        return {"cancelled": False, "ok": False, "tokens": n, "why": f"{e.code().name}: {e.details()}"}


async def leaks(mesh, within: float = 30.0) -> dict:
    import grpc

    from muxserve.v1 import memmgr_pb2, memmgr_pb2_grpc, worker_pb2, worker_pb2_grpc

    async with grpc.aio.insecure_channel(mesh.mesh.address("memmgr")) as ch:
        stub, end = memmgr_pb2_grpc.MemmgrStub(ch), time.monotonic() + within
        while True:
            s = await stub.Stats(memmgr_pb2.StatsRequest(), timeout=10)
            if s.free_blocks == s.capacity_blocks or time.monotonic() > end:
                break
            await asyncio.sleep(0.2)
        check = await stub.CheckIntegrity(memmgr_pb2.CheckIntegrityRequest(), timeout=10)
    base, busy = int(mesh.mesh.section("worker").port), 0
    for i in range(len([n for n in mesh.procs if n.startswith("worker-")])):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{base + i}") as ch:
            st = await worker_pb2_grpc.WorkerStub(ch).GetStatus(worker_pb2.WorkerStatusRequest(), timeout=10)
            busy += sum(m.running + m.waiting for m in st.models)
    return {"leaked_blocks": s.capacity_blocks - s.free_blocks, "capacity_blocks": s.capacity_blocks,
            "integrity_ok": check.ok, "worker_sequences_left": busy}


async def run(mesh, args) -> dict:
    import grpc

    from muxserve.v1 import router_pb2_grpc

    models = [m.name for m in mesh.mesh.models]
    rng = random.Random(0)
    cancel = set(rng.sample(range(args.streams), int(args.streams * args.cancel)))
    async with grpc.aio.insecure_channel(mesh.router_address) as ch:
        stub = router_pb2_grpc.RouterStub(ch)
        t0 = time.perf_counter()
        res = await asyncio.gather(*(one(stub, models[i % 3], i, args.tokens, i in cancel)
                                     for i in range(args.streams)))
        wall = time.perf_counter() - t0
    done = [r for r in res if not r["cancelled"]]
    lost = [r for r in done if not r["ok"]]
    ttfts = sorted(r["ttft"] for r in done if r["ok"])
    return {"streams": args.streams, "cancelled": len(res) - len(done), "completed": len(done) - len(lost),
            "lost": len(lost), "lost_examples": [r["why"] for r in lost[:3]], "wall_s": round(wall, 2),
            "output_tokens_per_s": round(sum(r["tokens"] for r in done) / wall, 1),
            "ttft_p50_s": round(statistics.median(ttfts), 3) if ttfts else None,
            "ttft_p99_s": round(ttfts[int(0.99 * (len(ttfts) - 1))], 3) if ttfts else None,
            **await leaks(mesh)}


def main() -> int:
    from muxserve.launcher import Mesh
    from muxserve.netutil import free_port

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--cancel", type=float, default=0.25)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cancel-load-"))
    ports = {s: free_port() for s in ("redis", "router", "placer", "memmgr", "worker")}
    mesh = Mesh(str(write_config(root, ports)), log_dir=str(root / "logs"), http_port=-1)
    with mesh.running(timeout=300):
        out = asyncio.run(run(mesh, args))
    out["logs"] = str(root / "logs")
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0 if out["lost"] == 0 and out["leaked_blocks"] == 0 and out["integrity_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
