"""Kernel variants side by side: fused decode steps of one model through libraries built from copies of csrc/.

Each --variants entry is a folder holding a copy of services/worker/engine/csrc (edited: the variant) or
`current` (the checkout's own). Every variant is built as its own library (native.build_from) for --isa and
runs the same decode steps of engine_throughput.py's default model (random weights, hidden 512, 8 layers,
8 heads, 4 KV heads, intermediate 1408) over the same pool: each case (rows x context tokens, every sequence
on its own blocks) in every round, variants in alternating order, min and median of --rounds. Outputs must
agree across variants (allclose 1e-4): a faster variant that computes something else is reported as an error.
Prints ms per step, each variant's speed over the first one, and one JSON line. --peak also times a one-thread
FMA loop (12 independent accumulators, the build's vector width) compiled with the same compiler: the ceiling
the matrix products are measured against.

    cp -r services/worker/engine/csrc /tmp/v1 && $EDITOR /tmp/v1/gemv.c
    python bench/kernel_ab.py --variants current,/tmp/v1
    python bench/kernel_ab.py --variants current --peak --rows 1,32 --contexts 16
    python bench/kernel_ab.py --variants current,/tmp/v1 --spread   # unequal contexts, as in a real batch
    python bench/kernel_ab.py --variants current,/tmp/v1 --gemm --rows 64,256,1024,4096   # the products alone

--spread gives row i of M the context max(1, round(2 * ctx * (i + 1) / (M + 1))) instead of ctx (the same mean,
from ~0 to ~2 ctx: work per (sequence, head) differs, as in engine_throughput's batches). --block-size is the
pool's tokens per block (default: the engine's, EngineConfig.block_size).
"""

from __future__ import annotations

import argparse
import os
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from services.worker.engine import fused, native  # noqa: E402
from services.worker.engine.config import EngineConfig  # noqa: E402
from services.worker.engine.panels import to_panels  # noqa: E402

PEAK_C = r"""
#include <stdio.h>
#include <time.h>
typedef float vf __attribute__((vector_size(VW * 4)));
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(void) {
    vf b, c, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11;
    for (int j = 0; j < VW; j++)
        b[j] = 1.0000001f, c[j] = 1e-7f, a0[j] = 0, a1[j] = 1, a2[j] = 2, a3[j] = 3, a4[j] = 4, a5[j] = 5,
        a6[j] = 6, a7[j] = 7, a8[j] = 8, a9[j] = 9, a10[j] = 10, a11[j] = 11;
    const long n = 20000000L; double best = 1e9;
    for (int r = 0; r < 5; r++) {
        double t = now();
        for (long k = 0; k < n; k++) {  /* 12 independent chains: throughput-bound, not latency-bound */
            a0 = a0 * b + c; a1 = a1 * b + c; a2 = a2 * b + c; a3 = a3 * b + c; a4 = a4 * b + c; a5 = a5 * b + c;
            a6 = a6 * b + c; a7 = a7 * b + c; a8 = a8 * b + c; a9 = a9 * b + c; a10 = a10 * b + c; a11 = a11 * b + c;
        }
        t = now() - t; if (t < best) best = t;
    }
    vf s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
    printf("%.3f %g\n", n * 12 * 2.0 * VW / best / 1e9, (double)s[0]);
    return 0;
}
"""
VECTOR_WIDTH = {"avx512": 16, "avx2": 8, "generic": 4}


def fma_peak(isa: str) -> float:
    """GFLOP/s of one thread on the FMA loop above (the build's flags, -O3 -ffp-contract=fast)."""
    cc = shutil.which("cc")
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "peak.c", Path(tmp) / "peak"
        src.write_text(PEAK_C)
        subprocess.run([cc, "-O3", "-ffp-contract=fast", *native.FLAGS[isa], f"-DVW={VECTOR_WIDTH[isa]}", str(src),
                        "-o", str(exe)], check=True, capture_output=True)
        return float(subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()[0])


def build_model(tmp: Path, max_rows: int, max_context: int, bs: int):
    """(spec, Transformer) of engine_throughput's default shape over a pool with room for every case."""
    from muxserve.tiny import write_tiny_checkpoint
    from services.worker.engine.loader import load_weights
    from services.worker.engine.model import Transformer

    write_tiny_checkpoint(tmp, arch="llama", hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4,
                          intermediate_size=1408)
    spec, weights = load_weights(tmp)
    per_seq = -(-max_context // bs) * spec.num_layers * spec.num_kv_heads  # blocks of one sequence
    pool = torch.zeros(max_rows * per_seq, 2, bs, spec.head_dim)  # [blocks, 2, bs, hd]
    return spec, Transformer(spec, weights, pool, calibrate_fused=False), per_seq


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="current", help="comma-separated csrc copies; `current`: the checkout's")
    ap.add_argument("--isa", default=None, help="avx512, avx2 or generic (default: the best this CPU runs)")
    ap.add_argument("--rows", default="1,8,32,64")
    ap.add_argument("--contexts", default="16,208", help="context tokens of every sequence")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per case and round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peak", action="store_true", help="also time the one-thread FMA loop")
    ap.add_argument("--spread", action="store_true", help="unequal contexts: from ~0 to ~2x --contexts")
    ap.add_argument("--block-size", type=int, default=EngineConfig.block_size, help="pool tokens per block")
    ap.add_argument("--gemm", action="store_true", help="time the products x @ W alone (GEMM_SHAPES, --rows rows)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    isa = args.isa or native.cpu_isas()[0]
    os.environ["MUXSERVE_NATIVE_ISA"] = isa  # the panels are packed for the ISA the libraries are built for
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    libs = {v: native.build_from(native.CSRC if v == "current" else v, isa) for v in names}
    if any(k is None for k in libs.values()):
        raise SystemExit(f"a variant did not build: {[v for v, k in libs.items() if k is None]}")
    rows, contexts = [int(x) for x in args.rows.split(",")], [int(x) for x in args.contexts.split(",")]
    if args.gemm:
        return gemm_ab(libs, names, rows, args.rounds, isa)
    with tempfile.TemporaryDirectory() as tmp:
        spec, m, per_seq = build_model(Path(tmp), max(rows), 2 * max(contexts) + 1, args.block_size)
        steps = {v: fused.FusedLayers(spec, m.layers, m.pool, m.embed, m.norm, None if m.tied else m.lm_head,
                                      m.inv_freq, k) for v, k in libs.items()}
        best: dict[tuple, list[float]] = {}  # (variant, rows, context): seconds per step, one per round
        for r in range(args.rounds):
            for M in rows:
                for ctx in contexts:
                    run_case(steps, names if r % 2 == 0 else names[::-1], spec, per_seq, M, ctx, args.steps, best,
                             args.spread)
    out = {"isa": isa, "threads": args.threads, "variants": names, "spread": args.spread,
           "block_size": args.block_size, **report(best, names, rows, contexts)}
    if args.peak:
        out["fma_peak_gflops_one_thread"] = fma_peak(isa)
        print(f"one-thread FMA peak ({isa}): {out['fma_peak_gflops_one_thread']:.1f} GFLOP/s")
    print(native.describe())
    print(json.dumps(out))
    return out


def report(best: dict, names: list[str], rows: list[int], contexts: list[int]) -> dict:
    """Print each case's min and median of rounds per variant (and its speed over the first); return both."""
    low = {k: min(ts) for k, ts in best.items()}
    mid = {k: statistics.median(ts) for k, ts in best.items()}
    print("ms per step: min of rounds (speed over the first variant), then median of rounds (speed)")
    for M in rows:
        for c in contexts:
            a, b = low[names[0], M, c], mid[names[0], M, c]
            print(f"rows {M:3d} context {c:4d}: " + "  ".join(
                f"{v} {low[v, M, c] * 1e3:7.2f} ({a / low[v, M, c]:.3f}x) {mid[v, M, c] * 1e3:7.2f} "
                f"({b / mid[v, M, c]:.3f}x)" for v in names), flush=True)
    return {"ms": {f"{v} M={M} ctx={c}": round(t * 1e3, 3) for (v, M, c), t in low.items()},
            "median_ms": {f"{v} M={M} ctx={c}": round(t * 1e3, 3) for (v, M, c), t in mid.items()}}


GEMM_SHAPES = ((512, 1024), (512, 2816), (1408, 512))  # [K, N] of the model's QKV, gate+up and down matrices


def gemm_ab(libs: dict, names: list[str], rows: list[int], rounds: int, isa: str) -> dict:
    """--gemm: GFLOP/s of each variant's gemv over column panels (and torch's x @ w) per shape and row count:
    best of `rounds` timings of >= 10 ms of calls each, after a warm-up (the weight stays in cache: the
    products' own speed)."""
    def best(fn) -> float:
        calls = max(1, int(0.01 / timed(fn)))
        return min(timed(lambda: [fn() for _ in range(calls)]) / calls for _ in range(rounds))
    out = {"isa": isa, "variants": names, "gflops": {}}
    for K, N in GEMM_SHAPES:
        w = torch.randn(K, N)  # [K, N]
        panels = {v: to_panels(w, k.widths) for v, k in libs.items()}  # [P, K, width]
        for M in rows:
            x, flop = torch.randn(M, K), 2 * M * K * N  # [M, K]
            ref = x @ w
            for v, k in libs.items():
                if not torch.allclose(k.gemv(x, panels[v]), ref, rtol=1e-4, atol=1e-4 * K ** 0.5):
                    raise SystemExit(f"variant {v} computes another product at {M} x {K} x {N}")
            g = {v: flop / best(lambda: k.gemv(x, panels[v])) / 1e9 for v, k in libs.items()}
            g["torch"] = flop / best(lambda: x @ w) / 1e9
            out["gflops"][f"{K}x{N} M={M}"] = {v: round(t, 1) for v, t in g.items()}
            print(f"{K}x{N} rows {M:5d} GFLOP/s: " + "  ".join(f"{v} {t:6.1f}" for v, t in g.items()), flush=True)
    print(native.describe())
    print(json.dumps(out))
    return out


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def contexts_of(M: int, ctx: int, spread: bool) -> list[int]:
    """Each row's context tokens: ctx, or with spread max(1, round(2 ctx (i + 1) / (M + 1))) (mean ~ctx)."""
    return [max(1, round(2 * ctx * (i + 1) / (M + 1))) if spread else ctx for i in range(M)]


def run_case(steps: dict, order: list[str], spec, per_seq: int, M: int, ctx: int, n: int, best: dict,
             spread: bool = False) -> None:
    """One case through every variant in `order`: time n steps, keep the best, check the outputs agree."""
    pos = torch.tensor(contexts_of(M, ctx, spread)) - 1  # [M] each row's new position
    tables = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(M)]
    t = steps[order[0]].tables(pos, tables, list(range(M)))  # [M, S] int32
    tokens = torch.arange(M) % spec.vocab_size  # [M]
    outs = {}
    for v in order:
        f = steps[v]
        outs[v] = f(tokens, pos, t)  # [M, V]; also the warm-up
        t0 = time.perf_counter()
        for _ in range(n):
            f(tokens, pos, t)
        best.setdefault((v, M, ctx), []).append((time.perf_counter() - t0) / n)
    ref = outs[order[0]]
    for v, o in outs.items():
        if not torch.allclose(o, ref, atol=1e-4, rtol=1e-4):
            raise SystemExit(f"variant {v} computes other logits (max diff {(o - ref).abs().max():.3g}) "
                             f"at {M} rows, context {ctx}")


if __name__ == "__main__":
    main()
