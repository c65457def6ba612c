"""All of a model's weight products at M rows: the engine's native GEMV over column panels vs a bmm over the same
panels vs MKL's `x @ w` over [K, N] copies (every matrix on huge pages). Best of 3 sweeps over all matrices, ms.

Shapes: `--shape 350m` (decode_bandwidth.py's Llama: 24 layers, hidden 1024, intermediate 2816) or `tiny`
(engine_throughput.py's: 8 layers, hidden 512, intermediate 1408). Random fp32 weights.

    python bench/matmul_rows.py [--shape 350m|tiny] [--rows 1,8,16,64,256]
    MUXSERVE_NATIVE_ISA=avx2 python bench/matmul_rows.py     # another ISA build this CPU runs

Prints the CPU's ISAs and the native build measured (its panel widths follow its register tiles).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
import services.worker.engine.model as model  # noqa: E402
from services.worker.engine import native  # noqa: E402
from services.worker.engine.hugepages import huge_copy  # noqa: E402
from services.worker.engine.panels import from_panels, to_panels  # noqa: E402

SHAPES = {"350m": (1024, 2816, 24, 3072), "tiny": (512, 1408, 8, 1024)}  # D, I, layers, QKV width


def sweep_ms(fn, mats, M: int, reps: int = 3) -> float:
    xs = {m.shape[-2]: torch.randn(M, m.shape[-2]) for m in mats}  # K of [P, K, w] or [K, N]
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for m in mats:
            fn(xs[m.shape[-2]], m)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def bmm(x: torch.Tensor, wp: torch.Tensor) -> torch.Tensor:
    P, K, w = wp.shape
    return torch.bmm(x.expand(P, x.shape[0], K), wp).transpose(0, 1).reshape(x.shape[0], P * w)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="350m")
    ap.add_argument("--rows", default="1,8,16,64,256")
    a = ap.parse_args(argv)
    if model.GEMV is None:
        sys.exit("the native GEMV is not available here (no C compiler?): nothing to compare")
    D, I, L, Nq = SHAPES[a.shape]
    print(native.describe(), flush=True)
    g = torch.Generator().manual_seed(0)
    panels = [huge_copy(to_panels(torch.randn(k, n, generator=g) * 0.02))
              for _ in range(L) for k, n in ((D, Nq), (D, D), (D, 2 * I), (I, D))]
    matrices = [huge_copy(from_panels(p).contiguous()) for p in panels]
    out = {"shape": a.shape, "threads": torch.get_num_threads(), "isa": native.kernels().isa,
           "cpu_isas": list(native.cpu_isas()), "rows": {}}
    for M in map(int, a.rows.split(",")):
        row = {"native_gemv_ms": sweep_ms(model.GEMV, panels, M), "bmm_over_panels_ms": sweep_ms(bmm, panels, M),
               "mkl_ms": sweep_ms(lambda x, w: x @ w, matrices, M)}
        out["rows"][M] = row
        print(f"{a.shape} M={M}: " + "  ".join(f"{k[:-3]} {v:.1f} ms" for k, v in row.items()), flush=True)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
