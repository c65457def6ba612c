"""Start one LLM's prefill and decode jobs over a unit's pool (thread or process jobs).

`make_jobs(cfg, config, pool, pool_attach)` loads the weights once and starts both jobs over the
same pool tensor `[num_blocks, 2, block_size, head_dim]`. Process jobs receive the pool tensor (CPU
shared memory or CUDA IPC), or, when `pool_attach` is given, that picklable callable, which each
child calls to map the pool itself (memmgr's segment: services/memmgr/segment.attach).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from services.worker.engine import loader
from services.worker.engine.config import EngineConfig, LLMConfig
from services.worker.engine.types import Job


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def make_jobs(cfg: LLMConfig, config: EngineConfig, pool: torch.Tensor,
              pool_attach: Callable[[], torch.Tensor] | None = None,
              cpu_shares: list | None = None) -> tuple[loader.ModelSpec, Job, Job]:
    """Load cfg's weights once and start its prefill and decode jobs over the shared pool; process jobs have
    built their runners when this returns (a job that could not start raises JobCrashedError, both closed).

    cpu_shares: [prefill, decode] ComputeShare (their cores) for process jobs on CPU (None: all cores)."""
    spec, weights = loader.load_weights(cfg.path, config.torch_dtype, config.device)
    spec = replace(spec, name=cfg.name)
    if config.job_mode == "process":
        from services.worker.engine import jobs
        from services.worker.engine.compute_share import start_mps_daemon

        if config.start_mps and config.device.startswith("cuda"):
            start_mps_daemon()  # before the jobs start (children find the daemon at CUDA init); no-op if up
        shares = job_shares(cfg.name, config, cpu_shares)
        started = []
        try:
            for kind, share in zip(("prefill", "decode"), shares):
                started.append(jobs.ProcessJob(spec, weights, pool, config.block_size, config.device, share,
                                               name=f"{cfg.name}-{kind}", pool_attach=pool_attach,
                                               omp_spin_count=config.omp_spin_count))
            for job in started:
                job.wait_started()  # JobCrashedError, with the child's reason, as soon as one died
        except BaseException:
            for job in started:
                job.close()
            raise
        return spec, *started
    from services.worker.engine.runner import ModelRunner, ThreadJob

    runner = ModelRunner(spec, weights, pool, config.block_size, config.device)
    return spec, ThreadJob(runner), ThreadJob(runner)


def job_shares(name: str, config: EngineConfig, cpu_shares: list | None = None) -> list:
    """[prefill, decode] ComputeShare of one LLM's process jobs: on CUDA its MPS percentage from
    config.compute_shares (None = whole GPU); on CPU `cpu_shares` (None = every core)."""
    from services.worker.engine.compute_share import ComputeShare

    if config.device.startswith("cuda"):
        fracs = [config.compute_shares.get(f"{name}/{k}") for k in ("prefill", "decode")]
        return [ComputeShare(gpu_percentage=max(1, round(f * 100))) if f else None for f in fracs]
    return list(cpu_shares or [None, None])
