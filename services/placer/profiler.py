"""`muxserve profile`: measure a cost table for one model on this machine, in the A100 table's format.

    muxserve profile --model PATH --out FILE [--name NAME] [--device cpu|cuda]
                     [--devices 1,2] [--shares 50,100] [--batches 1,2,4] [--seqs 16,32] [--reps 3]

CPU: a "device" is a core; a unit of n devices is cores 0..n-1 (sched_setaffinity) and a share s%
runs with max(1, round(s/100 * n)) torch threads. CUDA (one device): each share runs in a child
process with CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=s, which limits SMs only under a running MPS daemon
(without one, shares time-share the GPU and measure alike; the log says so).
prefill: median ms of a forward over batch x seq prompt tokens; decoding: median ms of one decode
step for `batch` sequences with `seq` cached tokens. The result merges into --out under NAME.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def _timed(fn, reps: int, sync) -> float:
    out = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1000)
    return statistics.median(out)


def measure_cell(model, batch: int, seq: int, reps: int, device: str) -> dict:
    """{"prefill": ms, "decoding": ms} for one (batch, seq) point."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq), device=device)  # [batch, seq]
    with torch.inference_mode():
        model(ids, use_cache=False)  # warm-up
        prefill = _timed(lambda: model(ids, use_cache=False), reps, sync)
        cache = model(ids, use_cache=True).cache
        nxt = torch.randint(0, vocab, (batch, 1), device=device)  # [batch, 1]
        decode = _timed(lambda: model(nxt, cache=cache, use_cache=True), reps, sync)
    return {"prefill": round(prefill, 4), "decoding": round(decode, 4)}


def profile_share(model, n: int, share: int, batches, seqs, reps: int, device: str) -> dict:
    """batch -> seq -> cell at one (devices, share) point."""
    import torch

    if device == "cpu":
        os.sched_setaffinity(0, set(range(n)))
        torch.set_num_threads(max(1, round(share / 100 * n)))
    return {str(b): {str(q): measure_cell(model, b, q, reps, device) for q in seqs} for b in batches}


def load_model(path: str, device: str):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.float16 if device == "cuda" else torch.float32
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()


def profile(path: str, device: str, devices, shares, batches, seqs, reps: int) -> dict:
    """devices -> share -> batch -> seq -> cell for the model at `path`."""
    if device == "cuda":
        return {"1": {str(s): _cuda_child(path, s, batches, seqs, reps) for s in shares}}
    model = load_model(path, "cpu")
    before = os.sched_getaffinity(0)
    try:
        return {str(n): {str(s): profile_share(model, n, s, batches, seqs, reps, "cpu") for s in shares}
                for n in devices}
    finally:
        os.sched_setaffinity(0, before)


def _cuda_child(path: str, share: int, batches, seqs, reps: int) -> dict:
    if not Path("/tmp/nvidia-mps").exists() and "CUDA_MPS_PIPE_DIRECTORY" not in os.environ:
        log.warning("no MPS daemon found: share %d%% time-shares the GPU", share)
    env = {**os.environ, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(share)}
    args = [sys.executable, "-m", "services.placer.profiler", "--child", "--model", path,
            "--batches", ",".join(map(str, batches)), "--seqs", ",".join(map(str, seqs)), "--reps", str(reps)]
    out = subprocess.run(args, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def merge_into(out: Path, name: str, table: dict) -> None:
    data = json.loads(out.read_text()) if out.exists() else {}
    data.setdefault(name, {})
    for n, by_share in table.items():
        data[name].setdefault(n, {}).update(by_share)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="muxserve profile", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="HF checkpoint folder")
    ap.add_argument("--name", default=None, help="table key (default: the folder name)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--devices", type=_ints, default=[1, os.cpu_count() or 1])
    ap.add_argument("--shares", type=_ints, default=[50, 100])
    ap.add_argument("--batches", type=_ints, default=[1, 2, 4])
    ap.add_argument("--seqs", type=_ints, default=[16, 32])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(profile_share(load_model(a.model, "cuda"), 1, 100, a.batches, a.seqs, a.reps, "cuda")))
        return 0
    err = _validate(a)
    if err:
        print(f"muxserve profile: error: {err}", file=sys.stderr)
        return 2
    table = profile(a.model, a.device, sorted(set(a.devices)), a.shares, a.batches, a.seqs, a.reps)
    name = a.name or Path(a.model).resolve().name
    merge_into(Path(a.out), name, table)
    print(json.dumps({"out": a.out, "model": name, "devices": sorted(table)}))
    return 0


def _validate(a) -> str | None:
    if not a.out:
        return "--out is required"
    if not (Path(a.model) / "config.json").exists():
        return f"no HF checkpoint (config.json) at {a.model}"
    if a.device == "cpu" and max(a.devices) > (os.cpu_count() or 1):
        return f"--devices {max(a.devices)} exceeds this machine's {os.cpu_count()} cores"
    if any(not 0 < s <= 100 for s in a.shares):
        return f"--shares must be in (0, 100], got {a.shares}"
    return None


if __name__ == "__main__":
    raise SystemExit(main())
