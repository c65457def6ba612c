"""Serving metrics over per-request records, the paper's way; shared by the simulator and bench/multiplex.py.

A record is a dict: model, start (arrival, s), end, latency, ttft, tpot, tokens (output tokens
received), completed (bool), tokens_wanted (max_tokens). Throughput is completed requests over the
makespan (first arrival to last finish: the paper's measure, which a finite request list's drain
lowers when its slowest request is long); `steady_output_tok_s` is the output tokens produced during
the second half of the arrival window, per second (past the warm-up, before the drain; a request's
tokens are spread evenly between its first token and its finish), and `steady_throughput_rps` that
over the mean output length of the list: what a steady stream sustains, in requests per second
(the offered rate when the system keeps up, its capacity when it does not; unlike completions in
the window it is not biased by requests that last longer than the window). A request meets the SLO at scale s when it completed and
its latency <= s x its latency alone (`base[model]`: ttft + tpot x (tokens_wanted - 1)); a request
that did not complete misses at every scale.
"""

from __future__ import annotations

SCALES = list(range(1, 21))


def slo_base(r: dict, base: dict) -> float:
    b = base[r["model"]]
    return b["ttft"] + b["tpot"] * max(r["tokens_wanted"] - 1, 0)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def summarize(results: list[dict], base: dict, models) -> dict:
    """Throughput, tokens/s, TTFT / TPOT / latency percentiles and SLO attainment at SCALES, overall and per model."""
    done = [r for r in results if r["completed"]]
    first, last = min(r["start"] for r in results), max(r["start"] for r in results)
    makespan = max(r["end"] for r in results) - first
    mid = (first + last) / 2
    steady_tok = sum(_tokens_between(r, mid, last) for r in results) / (last - mid) if last > mid else float("nan")
    mean_out = sum(r["tokens_wanted"] for r in results) / len(results)
    lat = [r["latency"] if r["completed"] else float("inf") for r in results]
    return {"requests": len(results), "completed": len(done), "makespan_s": makespan,
            "throughput_rps": len(done) / makespan,
            "steady_output_tok_s": steady_tok, "steady_throughput_rps": steady_tok / mean_out,
            "output_tok_s": sum(r["tokens"] for r in done) / makespan,
            "ttft_p50": pct([r["ttft"] for r in done], 50), "ttft_p99": pct([r["ttft"] for r in done], 99),
            "tpot_p50": pct([r["tpot"] for r in done], 50), "tpot_p99": pct([r["tpot"] for r in done], 99),
            "p99_latency": pct(lat, 99), "slo": attainment(results, base),
            "per_model": {m: per_model(results, base, m) for m in models}}


def attainment(results: list[dict], base: dict) -> dict[int, float]:
    """The fraction of `results` (every request: one not completed misses) within scale x its SLO base."""
    return {s: sum(r["completed"] and r["latency"] <= s * slo_base(r, base) for r in results) / max(len(results), 1)
            for s in SCALES}


def per_model(results: list[dict], base: dict, model: str) -> dict:
    """One model's requests: how many, completed, SLO attainment at SCALES, TTFT and TPOT medians."""
    mine = [r for r in results if r["model"] == model]
    done = [r for r in mine if r["completed"]]
    return {"requests": len(mine), "completed": len(done), "slo": attainment(mine, base),
            "ttft_p50": pct([r["ttft"] for r in done], 50), "tpot_p50": pct([r["tpot"] for r in done], 50)}


def _tokens_between(r: dict, t0: float, t1: float) -> float:
    """Output tokens of record r produced in [t0, t1], spread evenly from its first token to its end."""
    if r["tokens"] <= 1:
        first = r["start"] + r["ttft"]
        return float(r["tokens"]) if t0 <= first <= t1 else 0.0
    first, end = r["start"] + r["ttft"], r["end"]
    overlap = max(0.0, min(end, t1) - max(first, t0))
    return r["tokens"] * overlap / (end - first) if end > first else 0.0


def rate_at_slo(points: list[tuple[float, float]], target: float = 0.99) -> float:
    """Highest swept rate whose attainment >= target (linear between the last pass and first miss)."""
    best = 0.0
    for (r0, a0), (r1, a1) in zip(points, points[1:] + [(None, None)]):
        if a0 < target:
            break
        best = r0
        if r1 is not None and a1 < target:
            best = r0 + (r1 - r0) * (a0 - target) / (a0 - a1)
            break
    return best
