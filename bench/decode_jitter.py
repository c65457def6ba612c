"""Batch-1 decode steps one after another: their spread (min, median, mean, p90, max), not only the best one.

bench/decode_bandwidth.py keeps each round's best step; a user waits for the mean one, and on a shared host the
two differ (a thread that loses its core holds the other up at the fused step's barriers). Same model as
decode_bandwidth.py (the ~350M Llama, random fp32 weights in a temp dir), the engine's runner (its
EngineDecode), `--context` prompt tokens, then `--steps` decode steps per round, `--rounds` rounds (the
context prefilled again before each). One JSON line at the end.

    python bench/decode_jitter.py [--steps 60] [--rounds 2] [--context 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import decode_bandwidth as db  # noqa: E402
from sidebyside.models import DECODE  # noqa: E402  (decode_bandwidth.py's ~350M shape)


def spread(ms: list[float]) -> dict:
    xs = sorted(ms)
    return {"min": xs[0], "median": statistics.median(xs), "mean": statistics.mean(xs),
            "p90": xs[int(0.9 * (len(xs) - 1))], "max": xs[-1]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    db.keep_freed_memory()
    from services.worker.engine import native

    print(native.describe(), flush=True)
    shape = SimpleNamespace(**DECODE)
    out = {"steps": a.steps, "context": a.context, "threads": a.threads, "rounds": []}
    with tempfile.TemporaryDirectory() as tmp:
        e = db.EngineDecode(db.write_random_llama(Path(tmp) / "llama", shape), a.context, a.steps + 1)
        for r in range(a.rounds):
            e.restart()
            s = spread([e.step_ms() for _ in range(a.steps)])
            out["rounds"].append(s)
            print(f"round {r}: " + "  ".join(f"{k} {v:.1f} ms" for k, v in s.items()), flush=True)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
