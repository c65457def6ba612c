"""A short probe of this machine's CPU for the analytic cost model (services/placer/analytic.py).

    python -m services.placer.probe            # prints one JSON object (what `measure()` returns)

Measured, with torch, in this process (the placer runs it as a subprocess, so the placer itself never imports
torch, and caches the result: services/placer/devices.py):
- `bw1_Bps`, `bw_all_Bps`: bytes/s one thread, and every core this process may use, read (sum over a float32
  tensor of 64 MiB, well past the caches: the weight reads of a decode step); `bw1_by_bytes`: one thread's
  bytes/s by working-set size, 1 to 256 MiB (a small model's weights stay in the caches between steps);
- `flops1`: FLOP/s of one thread in a float32 matmul of [64, 512] x [512, 512] (a prefill chunk's product);
- the engine's own fixed costs: this engine's ModelRunner (what `muxserve profile` times and the worker runs) on
  random-weight Llamas of 1 and 3 layers (hidden 64, so the arithmetic is negligible), one decode step and one
  prefill step at batch 1 and 8 of SEQ tokens: `decode_ms` and `prefill_ms` map "layers,batch" to the median
  ms; "layers,batch,seq" is one longer prompt (LONG), which prices attention over past tokens.
Every time is the median of a few runs, as `muxserve profile` times its cells. One thread throughout: a CPU
"device" is a core, and a unit's share is its threads (profiler.py). About 10-20 s.
"""

from __future__ import annotations

import json
import statistics
import os
import sys
import tempfile
import time

SEQ = 16  # prompt and context length of the engine steps (short: the fixed costs, not attention, dominate)
POINTS = ((1, 1), (1, 8), (3, 1), (3, 8))  # (layers, batch) at SEQ tokens
BW_SIZES_MIB = (1, 4, 16, 64, 256)  # working sets: in the caches (a small model's weights) ... far past them
LONG = (3, 1, 256)  # (layers, batch, seq): one long prefill, for the cost of attention over the prompt


def _median_s(fn, reps: int) -> float:
    """The median of `reps` runs (after a warm-up), as `muxserve profile` times its cells (profiler.py): the
    estimate and the table it is checked against (and later replaced by) see the machine alike."""
    fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def bandwidth(threads: int, mib: int = 64) -> float:
    """Bytes/s `threads` threads read from a float32 tensor of `mib` MiB (summing it)."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(mib << 18)
    return x.numel() * 4 / _median_s(lambda: x.sum(), 9)


def matmul_flops() -> float:
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(64, 512), torch.randn(512, 512)
    return 2 * 64 * 512 * 512 / _median_s(lambda: a @ b, 9)


def engine_steps(workdir: str) -> tuple[dict, dict]:
    """({"L,B": decode ms}, {"L,B": prefill ms}) of this engine's runner at POINTS (batch B, SEQ tokens), and
    "L,B,S" for LONG."""
    import torch

    from muxserve.tiny import write_tiny_checkpoint
    from services.placer.profiler import EngineBench

    torch.set_num_threads(1)
    decode, prefill = {}, {}
    for layers in sorted({p[0] for p in POINTS}):
        path = write_tiny_checkpoint(os.path.join(workdir, f"l{layers}"), "llama", hidden_size=64,
                                     num_layers=layers, intermediate_size=128, seed=0)
        bench = EngineBench(str(path), "cpu", max(b for _, b in POINTS), LONG[2])
        for l, b, q in [(l, b, SEQ) for l, b in POINTS] + [LONG]:
            if l == layers:
                key = f"{l},{b}" if q == SEQ else f"{l},{b},{q}"
                decode[key], prefill[key] = _cell(bench, b, q)
    return decode, prefill


def _cell(bench, batch: int, seq: int, reps: int = 9) -> tuple[float, float]:
    """(decode ms, prefill ms), each the median of `reps`: EngineBench's steps (profiler.py)."""
    prefill, decode = bench._steps(batch, seq, False), bench._steps(batch, seq, True)
    pre = _median_s(lambda: bench.runner.execute(prefill), reps)  # its warm-up fills the context decode reads
    return round(_median_s(lambda: bench.runner.execute(decode), reps) * 1e3, 4), round(pre * 1e3, 4)


def measure() -> dict:
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="muxserve-probe-") as work:
        decode, prefill = engine_steps(work)
    by_size = {str(mib << 20): bandwidth(1, mib) for mib in BW_SIZES_MIB}
    return {"cores": cores, "bw1_Bps": by_size[str(64 << 20)], "bw1_by_bytes": by_size,
            "bw_all_Bps": bandwidth(cores), "flops1": matmul_flops(),
            "seq": SEQ, "long": list(LONG), "decode_ms": decode, "prefill_ms": prefill}


def main() -> int:
    import logging

    logging.disable(logging.WARNING)  # stdout carries the JSON; the engine's notes are not needed here
    print(json.dumps(measure()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
