"""OpenMP spin setting of the engine's processes (imports nothing heavy: it must run before torch loads).

libgomp workers busy-wait GOMP_SPINCOUNT iterations (300,000 by default) after each parallel region
before they sleep. A job process (or a worker running prefill and decode jobs on two threads, each with
its own OpenMP team) on a few cores then loses cores to spinning workers between its many small
parallel regions: on this project's 2-core machine a batch-1 decode step of a ~350M Llama took
~69 ms with the default and ~60 ms with 1,000 (`bench/decode_bandwidth.py`, docs/benchmarks.md),
while the 64-request throughput benchmark did not change. libgomp reads the variable once, when it
loads (with torch), so `set_spincount` must run before the first `import torch`; a value already in
the environment wins.
"""

from __future__ import annotations

import os
import sys

SPINCOUNT = "1000"


def set_spincount() -> bool:
    """Default GOMP_SPINCOUNT for this process and its children; True when it can still take effect here."""
    os.environ.setdefault("GOMP_SPINCOUNT", SPINCOUNT)
    return "torch" not in sys.modules
