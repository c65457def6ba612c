"""A job's compute share: CPU cores + threads, or a CUDA MPS thread percentage.

On CPU the child process pins itself to `cores` (os.sched_setaffinity) and uses `threads` intra-op
threads. On CUDA the share is CUDA_MPS_ACTIVE_THREAD_PERCENTAGE in the child's environment, which
only means something under a running MPS control daemon; without one, jobs time-share the GPU and
we say so in the log. The env var must be set before the child initialises CUDA, hence
`child_env` is applied by the parent around process start (see jobs.py).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ComputeShare:
    cores: list[int] | None = None  # None: all cores this process may use (a list compares by value)
    threads: int = 1
    gpu_percentage: int | None = None  # 1..100, CUDA MPS only

    def __post_init__(self):
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.cores is not None and not self.cores:
            raise ValueError("cores must be None or a non-empty list")
        if self.gpu_percentage is not None and not 1 <= self.gpu_percentage <= 100:
            raise ValueError(f"gpu_percentage must be in 1..100, got {self.gpu_percentage}")


def split_cores(fractions: list[float], cores: list[int] | None = None) -> list[ComputeShare]:
    """Split `cores` (default: this process's) into shares by fraction, in order (assign_cores)."""
    plan = assign_cores({str(i): f for i, f in enumerate(fractions)}, cores)
    return [plan[str(i)] for i in range(len(fractions))]


def cores_for(share: float | None, n: int) -> int:
    """How many of a unit's n cores a job with `share` gets: max(1, round(share x n)), all without one."""
    return min(max(1, round(share * n)), n) if share else n


def assign_cores(shares: dict[str, float | None], cores: list[int] | None = None) -> dict[str, ComputeShare]:
    """Divide `cores` (default: this process's) among jobs by share, in the order given.

    A job with a share gets max(1, round(share x len(cores))) consecutive cores, starting where the
    previous job's ended (wrapping around), so jobs are disjoint while the shares add up to at most
    1 and overlap round-robin past that; a job without a share (None) gets every core."""
    cores = sorted(cores if cores else os.sched_getaffinity(0))
    plan, start = {}, 0
    for job, share in shares.items():
        if share is None:
            plan[job] = ComputeShare(cores=cores, threads=len(cores))
            continue
        n = cores_for(share, len(cores))
        mine = sorted({cores[(start + i) % len(cores)] for i in range(n)})
        start += n
        plan[job] = ComputeShare(cores=mine, threads=len(mine))
    return plan


def mps_running() -> bool:
    """True when an MPS control daemon's pipe exists (CUDA_MPS_PIPE_DIRECTORY or the default)."""
    pipe_dir = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")
    return os.path.exists(os.path.join(pipe_dir, "control"))


MPS_CONTROL = "nvidia-cuda-mps-control"


def start_mps_daemon(timeout_s: float = 10.0) -> bool:
    """Start the CUDA MPS control daemon unless one runs; True when one runs afterwards.

    Where the binary is missing, starting is not permitted (not root, GPU not in a shareable compute
    mode) or the pipe does not appear, log why and return False: jobs then time-share the GPU. A
    daemon this starts keeps running after the engine stops, like one an administrator started
    (`echo quit | nvidia-cuda-mps-control` stops it)."""
    import shutil
    import subprocess
    import time

    if mps_running():
        return True
    exe = shutil.which(MPS_CONTROL)
    if exe is None:
        log.warning("%s not found: jobs time-share the GPU (no MPS compute shares)", MPS_CONTROL)
        return False
    try:
        subprocess.run([exe, "-d"], check=True, timeout=timeout_s, capture_output=True)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("could not start the MPS daemon (%s): jobs time-share the GPU", exc)
        return False
    deadline = time.monotonic() + timeout_s
    while not mps_running() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not mps_running():
        log.warning("the MPS daemon started but its control pipe did not appear: jobs time-share the GPU")
    return mps_running()


def child_env(share: ComputeShare, device: str, omp_spin_count: int = -1) -> dict[str, str]:
    """Environment variables the child needs before it starts: on CPU its OpenMP spin count (how long
    an idle job's threads keep their cores busy waiting for more work; libgomp's default spin steals
    the cores from the next job's dispatch: docs/multiplexing.md) unless GOMP_SPINCOUNT is set already
    or omp_spin_count is -1; on CUDA its MPS percentage."""
    if not str(device).startswith("cuda"):
        if omp_spin_count < 0 or "GOMP_SPINCOUNT" in os.environ:
            return {}
        return {"GOMP_SPINCOUNT": str(omp_spin_count)}
    if share.gpu_percentage is None:
        return {}
    if not mps_running():
        log.warning("no CUDA MPS daemon running: jobs time-share the GPU (gpu_percentage %d ignored)",
                    share.gpu_percentage)
        return {}
    return {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(share.gpu_percentage)}


def apply_in_child(share: ComputeShare) -> None:
    """Pin this process to its cores and set torch's thread count (call first thing in a job child)."""
    import torch

    if share.cores is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, share.cores)
    torch.set_num_threads(share.threads)
