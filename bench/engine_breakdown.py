"""Where the engine's time goes: timers around its functions, and weight read rates of matmul kernels.

Explains bench/engine_throughput.py and bench/decode_bandwidth.py (numbers in docs/benchmarks.md):
  --workload decode      the ~350M Llama of decode_bandwidth.py at batch 1 (context 128): per-step ms in the
                         fused native decode (or, --no-fused, the linear layers, attention and the whole
                         torch forward); then the read rate (GB/s) of
                         every weight matrix through a plain sum, `model.linear` on the engine's stored
                         layout (column panels + native.gemv where it runs), the K-split bmm over [K, N],
                         MKL `x @ w` and oneDNN (torch.utils.mkldnn), measured back to back
  --workload throughput  the 64-request run of engine_throughput.py (engine only): seconds per function

    python bench/engine_breakdown.py [--workload decode|throughput] [--no-fused] [--decode-bags | --decode-gather]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT.parent), str(ROOT)]
import decode_bandwidth as db  # noqa: E402
import engine_throughput as et  # noqa: E402
import services.worker.engine.attention as A  # noqa: E402
import services.worker.engine.fused as FU  # noqa: E402
import services.worker.engine.model as M  # noqa: E402
import services.worker.engine.runner as R  # noqa: E402

TIMES: dict[str, float] = {}


def timed(owner, name: str, key: str) -> None:
    """Replace owner.name by a wrapper adding its wall time to TIMES[key]."""
    fn = getattr(owner, name)

    def wrapper(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            TIMES[key] = TIMES.get(key, 0.0) + time.perf_counter() - t0

    setattr(owner, name, wrapper)


def instrument() -> None:
    timed(M, "linear", "linear")
    timed(M, "paged_attention", "attention")
    timed(A, "_attend_decode", "attention: decode groups")
    timed(A, "_attend_gather", "attention: prefill groups")
    timed(A, "write_kv", "attention: K/V writes")
    timed(R, "build_context", "step metadata")
    timed(FU.FusedLayers, "__call__", "fused decode (native, all layers)")
    timed(FU.FusedLayers, "tables", "fused decode: block tables")
    timed(M.Transformer, "forward", "forward")
    timed(R.ModelRunner, "execute", "execute (forward + sampling)")


def best(fn, reps: int = 5) -> float:
    fn()
    out = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t0)
    return out


def read_rates(model) -> dict[str, float]:
    """GB/s over all weight matrices of `model` (batch-1 x for the matmuls): as the engine stores them
    (column panels where native.gemv runs) and as [K, N] copies (on huge pages too) for the others."""
    from torch.utils import mkldnn

    from services.worker.engine.hugepages import huge_copy
    from services.worker.engine.panels import from_panels

    stored = [model.lm_head] + [w for L in model.layers for w in (L.wqkv, L.wo, L.w13, L.w2)]
    mats = [huge_copy(from_panels(w).contiguous()) for w in stored]  # [K, N] each
    nbytes = sum(w.numel() * w.element_size() for w in mats)
    xs = {w.shape[0]: torch.randn(1, w.shape[0]) for w in mats}
    lins = []
    for w in mats:
        lin = torch.nn.Linear(*w.shape, bias=False)
        lin.weight.data = w.t().contiguous()
        lins.append(mkldnn.to_mkldnn(lin))
    kernels = {"sum": lambda: [w.sum() for w in stored],
               "model.linear (as stored)": lambda: [M.linear(xs[w.shape[0]], s) for w, s in zip(mats, stored)],
               "K-split bmm over [K, N]": lambda: [M._matrix(xs[w.shape[0]], w) for w in mats],
               "x @ w (MKL)": lambda: [xs[w.shape[0]] @ w for w in mats],
               "oneDNN linear": lambda: [lin(xs[w.shape[0]]) for lin, w in zip(lins, mats)]}
    return {k: nbytes / best(f) / 1e9 for k, f in kernels.items()}


def decode(args) -> None:
    a = argparse.Namespace(layers=24, hidden=1024, heads=16, kv_heads=16, intermediate=2816, vocab=32000)
    R.keep_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        eng = db.EngineDecode(db.write_random_llama(Path(tmp) / "llama", a), 128, args.steps + 1)
        tok = eng._step([list(range(3, 131))], 0)[0]
        TIMES.clear()
        t0 = time.perf_counter()
        for i in range(args.steps):
            tok = eng._step([[tok]], 128 + i)[0]
        step = (time.perf_counter() - t0) / args.steps
        print(f"batch-1 decode step {step * 1e3:.1f} ms, of which (ms per step):")
        for k, v in TIMES.items():
            print(f"  {k:32s} {v / args.steps * 1e3:7.1f}")
        print(f"weights read per step {eng.bytes_read / 1e6:.0f} MB; read rates over them (GB/s):")
        for k, v in read_rates(eng.runner.model).items():
            print(f"  {k:32s} {v:7.1f}")


def throughput(args) -> None:
    run = et.run_engine

    def wrapped(*a):
        r = run(*a)
        print(f"engine {r['seconds']:.1f} s, of which (s):")
        for k, v in TIMES.items():
            print(f"  {k:32s} {v:7.2f}")
        return r

    et.RUNNERS["engine"] = wrapped
    et.main(["--systems", "engine"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=("decode", "throughput"), default="decode")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--decode-bags", action="store_true",
                    help="every decode group through embedding_bags, small ones too (attention.GATHER_MAX_ROWS = 0)")
    ap.add_argument("--decode-gather", action="store_true",
                    help="small decode groups gathered (attention.GATHER_MAX_ROWS = 64)")
    ap.add_argument("--no-fused", action="store_true",
                    help="decode steps of <= 8 sequences on the torch path, layer by layer (model.FUSED = False)")
    args = ap.parse_args()
    M.FUSED = not args.no_fused
    if args.decode_bags:
        A.GATHER_MAX_ROWS = 0
    if args.decode_gather:
        A.GATHER_MAX_ROWS = 64
    instrument()
    (decode if args.workload == "decode" else throughput)(args)


if __name__ == "__main__":
    main()
