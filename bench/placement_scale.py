"""Paper-scale placement check: `muxserve plan` for each workload and policy, timed.

Workloads: 19 LLMs (12x llama-7b, 4x 13b, 2x 30b, 1x 65b) on 4 nodes x 8 A100-80GB with power-law
rates rate_i = 20 * (i+1)^-alpha (alpha in 0.7, 0.9, 1.3, 1.7, 2.1; rates shuffled over the LLMs
with a fixed seed), and the 16-LLM ChatLMSYS rates of services/placer/data (every condense setting).
Prints one JSON line per (workload, policy), with the uncapped objective (`capacity_scale`: the
largest scale of all rates the layout still serves), and checks: every LLM placed, objective of
muxserve >= spatial and >= temporal. Run: python bench/placement_scale.py [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from services.placer.cli import plan_main  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "services" / "placer" / "data"
ALPHAS = (0.7, 0.9, 1.3, 1.7, 2.1)
PAPER_SIZES = ["llama-7b"] * 12 + ["llama-13b"] * 4 + ["llama-30b"] * 2 + ["llama-65b"]


def paper_config(alpha: float, seed: int = 0) -> dict:
    rates = [20 * (i + 1) ** -alpha for i in range(len(PAPER_SIZES))]
    random.Random(seed).shuffle(rates)
    models = [{"name": f"llm-{i}", "size": s, "rate": r} for i, (s, r) in enumerate(zip(PAPER_SIZES, rates))]
    return {"models": models, "cluster": {"device": "cuda", "nodes": 4, "devices_per_node": 8},
            "placer": {"device_memory_gb": 80, "cost_table": str(DATA / "a100-llama-cost.json")}}


def chatlmsys_configs() -> dict[str, dict]:
    data = json.loads((DATA / "chatlmsys-rates.json").read_text())
    out = {}
    for s in data["settings"]:
        out[f"chatlmsys-{s['condense']}"] = {
            "models": [{"name": m["name"], "size": m["size"], "rate": m["rate"]} for m in s["models"]],
            "cluster": {"device": "cuda", "nodes": data["cluster"]["nnodes"],
                        "devices_per_node": data["cluster"]["ngpus_per_node"]},
            "placer": {"device_memory_gb": 80, "cost_table": str(DATA / "a100-llama-cost.json"),
                       "avg_prompt_len": round(s["avg_prompt_len"]), "avg_output_len": round(s["avg_output_len"])}}
    return out


def run_plan(config_path: Path, policy: str) -> tuple[dict, float]:
    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        rc = plan_main(["--config", str(config_path), "--policy", policy, "--json", "--capacity"])
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"plan failed for {config_path} ({policy})")
    return json.loads(buf.getvalue()), seconds


def check(name: str, cfg: dict, folder: Path) -> bool:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    objective, ok = {}, True
    for policy in ("spatial", "temporal", "muxserve"):
        plan, seconds = run_plan(path, policy)
        placed = sorted(m["name"] for u in plan["units"] for m in u["llms"])
        all_placed = placed == sorted(m["name"] for m in cfg["models"])
        objective[policy] = plan["objective"]
        ok &= all_placed and seconds < 60
        print(json.dumps({"workload": name, "policy": policy, "seconds": round(seconds, 2),
                          "objective": plan["objective"], "total_rate": plan["total_rate"],
                          "capacity_scale": plan["capacity_scale"],
                          "units": len(plan["units"]), "all_placed": all_placed}))
    ok &= objective["muxserve"] >= objective["spatial"] - 1e-6
    ok &= objective["muxserve"] >= objective["temporal"] - 1e-6
    return ok


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="folder for the generated configs (default: a temp dir)")
    args = ap.parse_args()
    folder = Path(args.out or tempfile.mkdtemp(prefix="placement-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    workloads = {f"paper-alpha-{a}": paper_config(a) for a in ALPHAS} | chatlmsys_configs()
    results = {name: check(name, cfg, folder) for name, cfg in workloads.items()}
    print(json.dumps({"all_ok": all(results.values()), "failed": [n for n, ok in results.items() if not ok]}))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
