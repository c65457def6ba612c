"""Per-step cost of one sequence's block table, as a list of ints vs an array("i") (what the engine ships).

Head-wise blocks make tables long: a Llama-7B shape (32 layers, 32 KV heads, block_size 32) holds 1,024 ids per
32 tokens, 66,560 at 2,048 tokens. Every step the engine copies each scheduled sequence's table into its SeqStep,
a process job receives it pickled, and the runner turns it into an index tensor (attention.build_context).
This times each of those on one table, best of 20, for both representations.

    python bench/block_tables.py [--layers 32] [--kv-heads 32] [--block-size 32] [--context 2048]
"""

from __future__ import annotations

import argparse
import json
import pickle
import random
import sys
import time
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from services.worker.engine.attention import build_context  # noqa: E402


def best_ms(fn, reps: int = 20) -> float:
    out = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t0)
    return out * 1e3


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for k, v in dict(layers=32, kv_heads=32, block_size=32, context=2048).items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=int, default=v)
    a = ap.parse_args(argv)
    L, H, bs, ctx = a.layers, a.kv_heads, a.block_size, a.context
    n = (ctx // bs + 1) * L * H
    ids = list(range(n + 1000))
    random.Random(0).shuffle(ids)
    out = {"ids": n}
    for name, table in (("list", ids[:n]), ("array_i", array("i", ids[:n]))):
        blob = pickle.dumps(table[:], protocol=5)
        row = {"copy_ms": best_ms(lambda: table[:]),
               "pickle_ms": best_ms(lambda: pickle.dumps(table[:], protocol=5)),
               "unpickle_ms": best_ms(lambda: pickle.loads(blob)),
               "build_context_ms": best_ms(lambda: build_context([(ctx, 1, table)], L, H, bs, n + 1000,
                                                                 head_dim=128))}
        row["total_ms"] = sum(row.values())
        out[name] = row
        print(f"{name:8s} " + "  ".join(f"{k[:-3]} {v:.3f} ms" for k, v in row.items()))
    out["list_over_array"] = out["list"]["total_ms"] / out["array_i"]["total_ms"]
    print(f"{n} ids: list / array('i') = {out['list_over_array']:.1f}x")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
