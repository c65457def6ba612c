"""Ranges, ratios and done-when 2's targets from the rounds of bench/cpu_engines.py.

rounds: [{system: {workload: worker result dict or {"error": why}}}]. A system's range over rounds is
min / median / max of tok_per_s (throughput) or ms_per_token (decode). Targets (issue 15, done-when 2),
on medians: engine tok/s >= 1.2x vLLM-CPU's and >= 2x llama.cpp's; engine batch-1 ms/token <= llama.cpp's.
"""

from __future__ import annotations

import re
import statistics

LINE = re.compile(r"^round (\d+) (\S+)\s+(throughput|decode)\s+(?:([\d.]+) (?:tok/s|ms/token)|(.*?))  \(load ([\d.]+)\)$")

METRIC = {"throughput": "tok_per_s", "decode": "ms_per_token"}


def ranges(rounds: list[dict], systems: list[str], workloads: list[str]) -> dict:
    """{system: {workload: {"min", "median", "max", "n"} or {"error": first error}}}."""
    out: dict = {}
    for s in systems:
        for w in workloads:
            got = [r[s][w] for r in rounds if w in r.get(s, {})]
            vals = [g[METRIC[w]] for g in got if METRIC[w] in g]
            errs = [g["error"] for g in got if "error" in g]
            cell = ({"min": min(vals), "median": statistics.median(vals), "max": max(vals), "n": len(vals)}
                    if vals else {})
            if errs:
                cell["error"] = errs[0]
            out.setdefault(s, {})[w] = cell
    return out


def targets(rng: dict) -> dict:
    """Each target: the ratio of medians and whether it holds (None where a system has no number)."""
    def med(s, w):
        return rng.get(s, {}).get(w, {}).get("median")

    def check(name, num, den, need):
        ratio = None if num is None or den is None else num / den
        return {name: {"ratio": ratio, "need": need, "met": None if ratio is None else ratio >= need}}

    e_tp, e_ms = med("engine", "throughput"), med("engine", "decode")
    return (check("engine/vllm tok/s", e_tp, med("vllm", "throughput"), 1.2)
            | check("engine/llamacpp tok/s", e_tp, med("llamacpp", "throughput"), 2.0)
            | check("llamacpp/engine ms/token", med("llamacpp", "decode"), e_ms, 1.0))


def fmt(cell: dict, unit: str) -> str:
    if "median" not in cell:
        return "n/a (" + cell.get("error", "not run").splitlines()[0][:80] + ")"
    return f"{cell['median']:.1f} ({cell['min']:.1f}-{cell['max']:.1f}){unit}"


def table(rng: dict, workloads: list[str]) -> str:
    """A markdown table: one row per system, median (min-max) per workload."""
    head = {"throughput": "output tok/s, 24M, 64 requests", "decode": "batch-1 decode ms/token, ~350M"}
    lines = ["| system | " + " | ".join(head[w] for w in workloads) + " |", "| --- |" + " --- |" * len(workloads)]
    for s, cells in rng.items():
        lines.append(f"| {s} | " + " | ".join(fmt(cells[w], "") for w in workloads) + " |")
    return "\n".join(lines)


def rows_from_log(text: str) -> list[dict]:
    """The per-round results again from the `round R system workload value (load L)` lines of a run's
    output (a run stopped before its end writes no JSON): [{system: {workload: {metric, "loadavg_1m"}}}]."""
    rows: list[dict] = []
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        r, system, workload, value, error, load = m.groups()
        while len(rows) <= int(r):
            rows.append({})
        cell = {METRIC[workload]: float(value)} if value else {"error": error}
        rows[int(r)].setdefault(system, {})[workload] = cell | {"loadavg_1m": float(load)}
    return rows
