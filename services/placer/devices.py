"""The device the analytic cost model (analytic.py) prices steps on: a known GPU, or this machine's CPU as probed.

`device_spec(kind, gpu, cache_dir)` -> DeviceSpec:
- CUDA: the GPU named by `placer.gpu` (or, with `auto`, the first name `nvidia-smi` reports; A100-80GB when there
  is none, with a warning) from KNOWN_GPUS: datasheet peaks (HBM bandwidth, dense fp16/bf16 tensor FLOP/s) times
  the efficiencies and per-layer costs fitted to the MuxServe authors' A100 table (docs/placer.md says which
  cells and how close every other cell comes);
- CPU: a short probe of this machine (probe.py, run once as a subprocess so the placer never imports torch;
  cached as JSON in `cache_dir`, keyed by the CPU model and its usable cores). A CPU "device" is one core.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Fitted to the A100-80GB table (services/placer/data/a100-llama-cost.json, an engine without CUDA graphs):
# LLaMA-7B and -13B decode at batch 1 on one GPU give the bandwidth reached and the per-layer cost; one prefill
# cell (7B, 8 x 512 tokens) the FLOP/s reached; 7B on 2 and 8 GPUs the extra per-layer cost of tensor parallelism.
GPU_BW_EFF, GPU_FLOPS_EFF = 0.78, 0.58
GPU_LAYER_MS, GPU_TP_LAYER_MS = 0.087, 0.2


@dataclass(frozen=True)
class Overhead:
    """Fixed costs of one step, in ms: per step, per layer, and per layer x sequence (decode) or x token (prefill)."""

    step: float = 0.0
    layer: float = 0.0
    item: float = 0.0  # decode: per layer and sequence; prefill: per layer and prompt token

    def ms(self, layers: int, items: float) -> float:
        return self.step + layers * (self.layer + items * self.item)


@dataclass(frozen=True)
class DeviceSpec:
    """One device as the analytic model sees it. `bw` and `flops` are what ONE device (a GPU, or one CPU core
    with one thread) reaches; `bw_all` caps what all devices of a unit read together (CPU: the memory bus)."""

    name: str
    kind: str                  # "cuda" | "cpu"
    bw: float                  # bytes/s
    flops: float               # FLOP/s of dense products
    attn_flops: float          # FLOP/s of attention over past tokens (paged, per sequence)
    decode: Overhead
    prefill: Overhead
    dtype_bytes: int           # bytes per weight / KV element the engine runs in (fp16 on GPUs, fp32 on CPU)
    bw_all: float = float("inf")
    tp_layer_ms: float = 0.0   # per layer, when a unit spans several devices (all-reduces)
    source: str = ""           # where the numbers come from, for the log
    bw_by_bytes: tuple = ()    # ((working-set bytes, bytes/s), ...) ascending: CPU caches; empty: `bw` for all

    def bandwidth(self, nbytes: float) -> float:
        """One device's bytes/s reading a working set of `nbytes` (log-linear between the measured sizes)."""
        if not self.bw_by_bytes:
            return self.bw
        sizes = np.log([b for b, _ in self.bw_by_bytes])
        return float(np.interp(np.log(max(nbytes, 1.0)), sizes, [r for _, r in self.bw_by_bytes]))


def _gpu(name: str, tb_s: float, tflops: float) -> DeviceSpec:
    per_layer = Overhead(layer=GPU_LAYER_MS)
    return DeviceSpec(name, "cuda", tb_s * 1e12 * GPU_BW_EFF, tflops * 1e12 * GPU_FLOPS_EFF,
                      tflops * 1e12 * GPU_FLOPS_EFF, per_layer, per_layer, 2, tp_layer_ms=GPU_TP_LAYER_MS,
                      source=f"{name} datasheet ({tb_s} TB/s, {tflops:g} dense fp16 TFLOP/s) x the A100 table's "
                             f"efficiencies")


# datasheet HBM bandwidth (TB/s) and dense fp16/bf16 tensor TFLOP/s (no sparsity)
KNOWN_GPUS = {g.name: g for g in (
    _gpu("A100-40GB", 1.555, 312), _gpu("A100-80GB", 2.039, 312), _gpu("H100", 3.35, 989),
    _gpu("H100-PCIe", 2.0, 756), _gpu("H200", 4.8, 989), _gpu("L4", 0.3, 121), _gpu("L40S", 0.864, 362),
)}
_NAME_HINTS = (("H200", "H200"), ("H100 PCIe", "H100-PCIe"), ("H100", "H100"), ("A100-SXM4-40GB", "A100-40GB"),
               ("A100-PCIE-40GB", "A100-40GB"), ("A100", "A100-80GB"), ("L40S", "L40S"), ("L4", "L4"))


def gpu_spec(gpu: str = "auto") -> DeviceSpec:
    """KNOWN_GPUS[gpu]; `auto`: the GPU nvidia-smi names here, else A100-80GB (logged)."""
    if gpu != "auto":
        if gpu not in KNOWN_GPUS:
            raise ValueError(f"placer.gpu {gpu!r} is not a known GPU; known: {sorted(KNOWN_GPUS)} (or auto)")
        return KNOWN_GPUS[gpu]
    name = _nvidia_smi_name()
    for hint, key in _NAME_HINTS:
        if name and hint.lower() in name.lower():
            return KNOWN_GPUS[key]
    log.warning("analytic costs: GPU %r is not in the known table %s; pricing steps as an A100-80GB (set "
                "placer.gpu, or measure a table with `muxserve profile --device cuda`)", name or "(none found)",
                sorted(KNOWN_GPUS))
    return KNOWN_GPUS["A100-80GB"]


def _nvidia_smi_name() -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ""
    try:
        out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (out.stdout.strip().splitlines() or [""])[0]


def _fit(points: dict, seq: int, prompt: bool) -> Overhead:
    """Overhead from probe points {"L,B": ms} by least squares (coefficients >= 0): ms = step + L x (layer +
    items x item), items = B (decode) or B x seq (prefill)."""
    rows, ys = [], []
    for key, ms in points.items():
        parts = [int(x) for x in key.split(",")]
        if len(parts) != 2:
            continue
        layers, batch = parts
        rows.append([1.0, layers, layers * batch * (seq if prompt else 1)])
        ys.append(ms)
    coef = np.clip(np.linalg.lstsq(np.array(rows), np.array(ys), rcond=None)[0], 0.0, None)
    return Overhead(*map(float, coef))


def cpu_from_probe(p: dict) -> DeviceSpec:
    """The CPU DeviceSpec from a probe.measure() result (see probe.py for what each number is)."""
    seq, (ll, lb, lq) = p["seq"], p["long"]
    decode, prefill = _fit(p["decode_ms"], seq, False), _fit(p["prefill_ms"], seq, True)
    # the long prompt's time beyond the fitted fixed costs is its attention: 4 x width FLOP per token pair / 2
    width = 64  # the probe model's heads x head_dim (hidden 64)
    long_ms = p["prefill_ms"][f"{ll},{lb},{lq}"] - prefill.ms(ll, lb * lq)
    attn = 4 * width * ll * lb * lq * lq / 2
    attn_flops = attn / (long_ms / 1e3) if long_ms > 0 else p["flops1"]
    by_bytes = tuple(sorted((float(b), float(r)) for b, r in p.get("bw1_by_bytes", {}).items()))
    return DeviceSpec(f"cpu ({platform.processor() or platform.machine()}, {p['cores']} cores)", "cpu",
                      p["bw1_Bps"], p["flops1"], min(attn_flops, p["flops1"]), decode, prefill, 4,
                      bw_all=max(p["bw_all_Bps"], p["bw1_Bps"]), source="probe of this machine (probe.py)",
                      bw_by_bytes=by_bytes)


def probe_cpu(cache_dir: str | Path | None = None, timeout_s: float = 300.0) -> dict:
    """probe.measure() of this machine, from `cache_dir` (default ~/.cache/muxserve) when measured before."""
    cache = Path(cache_dir or Path.home() / ".cache" / "muxserve") / f"cpu-probe-{_cpu_key()}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    log.info("analytic costs: probing this machine's CPU once (memory bandwidth, FLOP/s, engine step costs)")
    out = subprocess.run([sys.executable, "-m", "services.placer.probe"], capture_output=True, text=True,
                         timeout=timeout_s, check=True, cwd=Path(__file__).resolve().parents[2])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result))
    return result


def _cpu_key() -> str:
    model = "cpu"
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return "".join(c if c.isalnum() else "-" for c in f"{model}-{len(os.sched_getaffinity(0))}").lower()


def device_spec(kind: str, gpu: str = "auto", cache_dir: str | Path | None = None) -> DeviceSpec:
    """The DeviceSpec of the cluster's devices (`cluster.device`: cuda or cpu)."""
    return gpu_spec(gpu) if kind.startswith("cuda") else cpu_from_probe(probe_cpu(cache_dir))
