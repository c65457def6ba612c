"""`muxserve profile`: measure a cost table for one model on this machine, in the A100 table's format.

    muxserve profile --model PATH --out FILE [--name NAME] [--device cpu|cuda]
                     [--devices 1,2] [--shares 50,100] [--batches 1,2,4] [--seqs 16,32] [--reps 3]

CPU: a "device" is a core; a unit of n devices is cores 0..n-1 (sched_setaffinity) and a share s%
runs with max(1, round(s/100 * n)) torch threads. CUDA (one device): each share runs in a child
process with CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=s, which limits SMs only under a running MPS daemon
(without one, shares time-share the GPU and measure alike; the log says so).
Measured with THIS engine (its ModelRunner over a paged pool, the kernels the worker runs), not with
transformers: prefill is the median ms of one prefill step of batch x seq prompt tokens; decoding the
median ms of one decode step of `batch` sequences with `seq` cached tokens. Progress goes to stderr.
The result merges into --out under NAME.

CPU: a cell measured more than SLOWER_WITH_MORE_THREADS times slower with more threads than the same
(batch, seq) with fewer was disturbed (another process took a core: a 2-thread step waits for it at every
barrier) and is measured again after a pause, up to LOOKS more times, keeping the faster time of each
kind; what stays slower is kept and logged (`recheck`).
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


BLOCK_SIZE = 32  # the engine's default block size (EngineConfig.block_size)
SLOWER_WITH_MORE_THREADS = 1.3  # a CPU cell this much slower than with fewer threads is measured again
LOOKS = 3  # further looks at such a cell, after pauses of 0.2, 0.4, 0.6 s


class EngineBench:
    """This engine's ModelRunner over a pool that holds max_batch x (max_seq + 1) tokens: what the
    placer estimates is what the worker runs (same kernels, same paged attention)."""

    def __init__(self, path: str, device: str, max_batch: int, max_seq: int):
        import torch

        from services.worker.engine.loader import load_weights
        from services.worker.engine.pool import allocate_pool, blocks_for_tokens
        from services.worker.engine.runner import ModelRunner

        dtype = torch.float16 if device == "cuda" else torch.float32
        self.spec, weights = load_weights(path, dtype, device)
        s = self.spec
        self.per_seq = blocks_for_tokens(max_seq + 1, BLOCK_SIZE, s.num_layers, s.num_kv_heads)
        pool = allocate_pool(self.per_seq * max_batch, BLOCK_SIZE, s.head_dim, dtype, device)
        self.runner = ModelRunner(s, weights, pool, BLOCK_SIZE, device)
        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def _steps(self, batch: int, seq: int, decode: bool) -> object:
        import torch
        from array import array

        from services.worker.engine.types import SamplingParams, SeqStep, StepInput

        greedy = SamplingParams(max_tokens=1)
        ids = torch.randint(3, self.spec.vocab_size, (batch, seq)).tolist()  # [batch, seq]
        steps = []
        for i in range(batch):
            table = array("i", range(i * self.per_seq, (i + 1) * self.per_seq))
            tokens, start = (ids[i][-1:], seq) if decode else (ids[i], 0)
            steps.append(SeqStep(i, tokens, start, table, greedy, int(decode)))
        return StepInput("profile", steps)

    def cell(self, batch: int, seq: int, reps: int) -> dict:
        """{"prefill": ms of one prefill of batch x seq tokens, "decoding": ms of one decode step of
        batch sequences with seq cached tokens} (medians)."""
        prefill, decode = self._steps(batch, seq, False), self._steps(batch, seq, True)
        self.runner.execute(prefill)  # warm-up; also fills the context the decode step reads
        pre = _timed(lambda: self.runner.execute(prefill), reps, self.sync)
        self.runner.execute(decode)
        dec = _timed(lambda: self.runner.execute(decode), reps, self.sync)
        return {"prefill": round(pre, 4), "decoding": round(dec, 4)}


def profile_share(bench: EngineBench, n: int, share: int, batches, seqs, reps: int, device: str,
                  progress=None) -> dict:
    """batch -> seq -> cell at one (devices, share) point."""
    import torch

    if device == "cpu":
        cores = sorted(os.sched_getaffinity(0))[:n] if len(os.sched_getaffinity(0)) >= n else list(range(n))
        os.sched_setaffinity(0, set(cores))
        torch.set_num_threads(threads_of(n, share))
    out = {}
    for b in batches:
        out[str(b)] = {}
        for q in seqs:
            out[str(b)][str(q)] = bench.cell(b, q, reps)
            if progress is not None:
                progress.update(1)
    return out


def threads_of(n: int, share: int) -> int:
    """Torch threads of a CPU share of `share`% of n cores: the cores the engine gives such a job."""
    from services.worker.engine.compute_share import cores_for

    return cores_for(share / 100, n)


def suspects(table: dict) -> list[tuple[str, str, str, str]]:
    """(devices, share, batch, seq) of the CPU cells more than SLOWER_WITH_MORE_THREADS times slower, in
    either kind, than the same (batch, seq) measured with fewer threads."""
    cells = [(n, s, b, q, threads_of(int(n), int(s)), cell)
             for n in table for s in table[n] for b, by_seq in table[n][s].items() for q, cell in by_seq.items()]
    def slower(cell, other):
        return any(cell[k] > SLOWER_WITH_MORE_THREADS * other[k] for k in cell)
    return sorted({(n, s, b, q) for n, s, b, q, t, cell in cells
                   for _, _, b1, q1, t1, other in cells if (b1, q1) == (b, q) and t1 < t and slower(cell, other)})


def recheck(table: dict, measure, pause_s: float = 0.2) -> list[tuple[str, str, str, str]]:
    """Measure the suspects (module docstring) again, up to LOOKS times, with measure(devices, share, batch,
    seq) -> cell; each kind keeps its faster time. Returns the cells still suspect afterwards."""
    left = suspects(table)
    for look in range(1, LOOKS + 1):
        if not left:
            break
        time.sleep(pause_s * look)
        for n, s, b, q in left:
            new, old = measure(n, s, b, q), table[n][s][b][q]
            table[n][s][b][q] = {k: min(old[k], new[k]) for k in old}
            log.info("profile: cell devices %s share %s batch %s seq %s looked at again (look %d): %s -> %s",
                     n, s, b, q, look, old, table[n][s][b][q])
        left = suspects(table)
    for cell in left:
        log.warning("profile: cell devices %s share %s batch %s seq %s stays slower than with fewer threads", *cell)
    return left


def profile(path: str, device: str, devices, shares, batches, seqs, reps: int) -> dict:
    """devices -> share -> batch -> seq -> cell for the model at `path` (progress on stderr)."""
    from tqdm import tqdm

    if device == "cuda":
        return {"1": {str(s): _cuda_child(path, s, batches, seqs, reps) for s in shares}}
    before = os.sched_getaffinity(0)
    bench = EngineBench(path, "cpu", max(batches), max(seqs))
    total = len(devices) * len(shares) * len(batches) * len(seqs)
    try:
        with tqdm(total=total, desc=f"profiling {Path(path).name}", unit="cell", file=sys.stderr) as bar:
            table = {str(n): {str(s): profile_share(bench, n, s, batches, seqs, reps, "cpu", bar) for s in shares}
                     for n in devices}
        recheck(table, lambda n, s, b, q: profile_share(bench, int(n), int(s), [int(b)], [int(q)], reps,
                                                         "cpu")[b][q])
        return table
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
        bench = EngineBench(a.model, "cuda", max(a.batches), max(a.seqs))
        print(json.dumps(profile_share(bench, 1, 100, a.batches, a.seqs, a.reps, "cuda")))
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
