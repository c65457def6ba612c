"""The report of bench/multiplex.py: per-policy metrics from the replayed requests, the headline ratios
and the plot (SLO attainment vs scale and vs rate, throughput measured vs the placer's estimate)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services.placer.simulator import metrics  # noqa: E402
from services.placer.simulator.metrics import SCALES, rate_at_slo  # noqa: E402


def summarize(results: list[dict], reqs: list, base: dict, models) -> dict:
    want = {r.rid: r.max_tokens for r in reqs}
    for r in results:
        r["tokens_wanted"] = want[r["rid"]]
    return metrics.summarize(results, base, models)


def simulated(sim: dict, rates: list[float], base: dict, models) -> dict:
    """The simulator's summary of the same request lists (records already carry tokens_wanted)."""
    runs = {rate: metrics.summarize(sim[rate], base, models) for rate in rates}
    return {"dispatch_overhead_s": sim["dispatch_overhead_s"], "runs": runs,
            "rate_at_99pct_slo8": rate_at_slo([(rate, runs[rate]["slo"][8]) for rate in rates])}


def validation_lines(report: dict) -> list[str]:
    """Measured vs simulated per policy and rate (markdown): throughput, steady throughput, SLO@8."""
    lines = ["| policy | offered req/s | throughput measured / simulated | steady measured / simulated | "
             "SLO@8 measured / simulated |", "| --- | --- | --- | --- | --- |"]
    for p, v in report["policies"].items():
        for rate, m in v["runs"].items():
            sim = v.get("simulated", {}).get("runs", {}).get(rate)
            if sim is None:
                continue
            err = sim["throughput_rps"] / m["throughput_rps"] - 1
            lines.append(f"| {p} | {float(rate):g} | {m['throughput_rps']:.2f} / {sim['throughput_rps']:.2f} "
                         f"({err:+.0%}) | {m['steady_throughput_rps']:.2f} / {sim['steady_throughput_rps']:.2f} | "
                         f"{m['slo'][8]:.3f} / {sim['slo'][8]:.3f} |")
    return lines


def per_model_lines(report: dict) -> list[str]:
    """Per policy, rate and model (markdown): completed, SLO@8 attainment and median TTFT / TPOT, measured and,
    where the run was simulated, simulated: which model a policy's misses come from."""
    lines = ["| policy | offered req/s | model | completed | SLO@8 measured / simulated | TTFT p50 (s) | "
             "TPOT p50 (ms) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for p, v in report["policies"].items():
        for rate, m in v["runs"].items():
            sim = v.get("simulated", {}).get("runs", {}).get(rate, {}).get("per_model", {})
            for model, x in m["per_model"].items():
                cells = [_pair(x, sim.get(model), get, fmt) for get, fmt in (
                    (lambda d: d["slo"][8], ".3f"), (lambda d: d["ttft_p50"], ".3g"), (lambda d: 1000 * d["tpot_p50"], ".3g"))]
                lines.append(f"| {p} | {float(rate):g} | {model} | {x['completed']}/{x['requests']} | " +
                             " | ".join(cells) + " |")
    return lines


def _pair(measured: dict, simulated: dict | None, get, fmt: str) -> str:
    """"measured / simulated" of one per-model value (only the measured one without a simulation)."""
    return format(get(measured), fmt) + (f" / {format(get(simulated), fmt)}" if simulated else "")


def cpu_per_1k(cpu: dict[str, float], results: list[dict]) -> dict[str, float]:
    tokens = sum(r["tokens"] for r in results) or 1
    return {name: round(1000 * s / tokens, 4) for name, s in sorted(cpu.items())}


def build_report(raw: dict, lists: dict, rates: list[float], args, models) -> dict:
    base = raw["spatial"]["base"]
    rep = {"args": vars(args), "cpu": os.cpu_count(), "base": base, "policies": {}}
    for p, r in raw.items():
        runs = {rate: summarize(r["runs"][rate], lists[rate], base, models) for rate in rates}
        rep["policies"][p] = {"estimate_rps": r["plan"]["objective"], "plan": [
            {"unit": u["unit_id"], "devices": u["devices"], "mode": u["mode"],
             "llms": {l["name"]: {"prefill": l["prefill_share"], "decode": l["decode_share"]} for l in u["llms"]}}
            for u in r["plan"]["units"]], "runs": runs,
            "rate_at_99pct_slo8": rate_at_slo([(rate, runs[rate]["slo"][8]) for rate in rates])}
        if "cpu_s" in r:  # CPU seconds per 1,000 output tokens, per service and offered rate
            rep["policies"][p]["cpu_s_per_1k_tokens"] = {rate: cpu_per_1k(r["cpu_s"][rate], r["runs"][rate])
                                                        for rate in rates if rate in r["cpu_s"]}
        if "simulated" in r:
            rep["policies"][p]["simulated"] = simulated(r["simulated"], rates, base, models)
    head = {"rate": args.rate}
    for p, v in rep["policies"].items():
        m = v["runs"][args.rate]
        head[p] = {"throughput_rps": round(m["throughput_rps"], 3), "estimate_rps": round(v["estimate_rps"], 3),
                   "completed": m["completed"], "slo8": round(m["slo"][8], 3), "p99_latency": round(m["p99_latency"], 2),
                   "ttft_p99": round(m["ttft_p99"], 3), "tpot_p99": round(m["tpot_p99"], 4),
                   "rate_at_99pct_slo8": round(v["rate_at_99pct_slo8"], 3)}
        if "simulated" in v:
            sim = v["simulated"]["runs"][args.rate]
            head[p]["simulated"] = {"throughput_rps": round(sim["throughput_rps"], 3), "slo8": round(sim["slo"][8], 3),
                                    "rate_at_99pct_slo8": round(v["simulated"]["rate_at_99pct_slo8"], 3)}
    head.update(ratios(head, ""))
    head["repeats"] = {label: x for label in sorted({p.partition("#")[2] for p in raw}) if (x := ratios(head, label))}
    head["ranges"] = {key: [min(v), max(v)] for key in ("muxserve/spatial", "muxserve/temporal") if (v := [
        r[key]["throughput"] for r in head["repeats"].values() if key in r])}
    rep["headline"] = head
    return rep


def ratios(head: dict, label: str) -> dict:
    """muxserve/spatial and muxserve/temporal of one repeat (policies NAME#label; "" the unlabelled ones):
    throughput and highest rate at 99% SLO (None where the other policy never reaches 99%)."""
    tag = f"#{label}" if label else ""
    mux, out = head.get("muxserve" + tag), {}
    for other in ("spatial", "temporal"):
        o = head.get(other + tag)
        if mux and o:
            out[f"muxserve/{other}"] = {
                "throughput": round(mux["throughput_rps"] / o["throughput_rps"], 3),
                "rate_at_slo": round(mux["rate_at_99pct_slo8"] / o["rate_at_99pct_slo8"], 3)
                if o["rate_at_99pct_slo8"] else None}
    return out


def draw(report: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib missing (pip install -e .[bench]): no plot", file=sys.stderr)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, c, b) = plt.subplots(1, 3, figsize=(15, 4))
    rate = report["headline"]["rate"]
    low = min(float(r) for r in next(iter(report["policies"].values()))["runs"])
    for p, v in report["policies"].items():
        runs = {float(r): m for r, m in v["runs"].items()}
        slo = runs[low]["slo"]
        a.plot(SCALES, [slo.get(s, slo.get(str(s))) for s in SCALES], marker="o", ms=3, label=p)
        rs = sorted(runs)
        c.plot(rs, [runs[r]["slo"].get(8, runs[r]["slo"].get("8")) for r in rs], marker="o", label=p)
    a.set(xlabel="SLO scale (x latency alone)", ylabel="SLO attainment", title=f"{low:g} req/s", ylim=(0, 1.02))
    c.axhline(0.99, color="grey", lw=0.8, ls="--")
    c.set(xlabel="offered req/s", ylabel="SLO attainment at scale 8", ylim=(0, 1.02), title="attainment vs rate")
    a.legend()
    c.legend()
    names = list(report["policies"])
    b.bar([n + " (measured)" for n in names],
          [{float(r): m for r, m in report["policies"][n]["runs"].items()}[rate]["throughput_rps"] for n in names])
    b.bar([n + " (placer)" for n in names], [report["policies"][n]["estimate_rps"] for n in names], alpha=0.5)
    b.set(ylabel="completed req/s", title=f"throughput at {rate:g} req/s")
    b.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
