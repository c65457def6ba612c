"""How close the placer's analytic cost estimate (services/placer/analytic.py) comes to measured cost tables.

    python bench/cost_estimate.py                                  # the A100 table (MuxServe authors')
    python bench/cost_estimate.py --cpu-table T.json --model DIR --key K   # + a `muxserve profile` table here

For every measured cell: estimate / measured, per step kind: the geometric mean, the median, the range and the
share of cells within 1.5x and 2x. The CPU estimate uses this machine's probe (cached: services/placer/devices.py).
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.placer.analytic import AnalyticCost  # noqa: E402
from services.placer.config import DEFAULT_COST_TABLE  # noqa: E402
from services.placer.costmodel import CostTable  # noqa: E402
from services.placer.devices import KNOWN_GPUS, cpu_from_probe, probe_cpu  # noqa: E402
from services.placer.llmspec import spec_from_path, spec_from_size  # noqa: E402


def ratios(table: CostTable, est: AnalyticCost, key: str, which: str, devices=None) -> list[float]:
    out = []
    for n, by_share in table._raw[key].items():
        for share, by_batch in by_share.items():
            for b, by_seq in by_batch.items():
                for q, cell in by_seq.items():
                    ms = cell["prefill" if which == "prefill" else "decoding"]
                    if ms > 0 and (devices is None or int(n) in devices):
                        f = est.prefill_ms if which == "prefill" else est.decode_ms
                        out.append(f(key, int(n), int(share) / 100, int(b), int(q)) / ms)
    return out


def summary(rs: list[float]) -> dict:
    return {"cells": len(rs), "gmean": round(math.exp(statistics.fmean(map(math.log, rs))), 3),
            "median": round(statistics.median(rs), 3), "min": round(min(rs), 3), "max": round(max(rs), 3),
            "within_1.5x": round(sum(1 / 1.5 <= r <= 1.5 for r in rs) / len(rs), 3),
            "within_2x": round(sum(0.5 <= r <= 2 for r in rs) / len(rs), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-table", default=None)
    ap.add_argument("--model", default=None, help="checkpoint the CPU table measured")
    ap.add_argument("--key", default=None, help="its key in the CPU table")
    ap.add_argument("--devices", default="1", help="device counts of the CPU table to compare (e.g. 1,2)")
    a = ap.parse_args()
    out = {}
    a100 = CostTable.load(DEFAULT_COST_TABLE)
    est = AnalyticCost({k: spec_from_size(k, 1, k).shape for k in a100.models()}, KNOWN_GPUS["A100-80GB"])
    for which in ("prefill", "decode"):
        out[f"a100/{which}"] = summary([r for k in a100.models() for r in ratios(a100, est, k, which)])
        for k in a100.models():
            out[f"a100/{k}/{which}"] = summary(ratios(a100, est, k, which))
    if a.cpu_table:
        table, devices = CostTable.load(a.cpu_table), {int(x) for x in a.devices.split(",")}
        cpu = AnalyticCost({a.key: spec_from_path(a.key, 1, a.model).shape}, cpu_from_probe(probe_cpu()))
        for which in ("prefill", "decode"):
            out[f"cpu:{a.key}/{which}"] = summary(ratios(table, cpu, a.key, which, devices))
    print(f"{'table/model/step':32s} {'cells':>6s} {'gmean':>6s} {'median':>6s} {'min':>6s} {'max':>6s} "
          f"{'<=1.5x':>6s} {'<=2x':>6s}")
    for name, s in out.items():
        print(f"{name:32s} {s['cells']:6d} {s['gmean']:6.3f} {s['median']:6.3f} {s['min']:6.3f} {s['max']:6.3f} "
              f"{s['within_1.5x']:6.1%} {s['within_2x']:6.1%}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
