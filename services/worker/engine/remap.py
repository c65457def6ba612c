"""Move an idle UnitEngine onto a new KV pool (memmgr restarted with a new shared segment).

`rebind_pool(engine, pool, pool_attach)`: the engine's pool, its capacity and every LLM's prefill and
decode jobs switch to `pool` (`[num_blocks, 2, block_size, head_dim]`, same block_size, head_dim and
dtype as before; num_blocks may differ). Each process job's child maps the new segment with
`pool_attach` and rebuilds its runner over the weights it already holds (a dead child is restarted over
it instead); nothing is reloaded from disk. Thread jobs cannot follow (their runner
was built over the old tensor): ValueError, and the caller reports the worker broken.

Precondition (checked, RuntimeError otherwise): no sequence holds a block and no dispatch is in
flight; the caller has failed every request on the old pool and waited for them to let go. The
caller also keeps new requests out until this returns (the engine's lock is not held during the job
restarts, which take a while).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from services.worker.engine.types import JobCrashedError

log = logging.getLogger(__name__)


def rebind_pool(engine, pool: torch.Tensor, pool_attach: Callable[[], torch.Tensor] | None,
                drop_old: Callable[[], None] | None = None) -> None:
    """Switch `engine` (a UnitEngine) to `pool`; see the module docstring for the contract. Each job
    process calls drop_old (picklable) once its runner over the old pool is gone."""
    old = engine.pool
    if tuple(pool.shape[1:]) != tuple(old.shape[1:]) or pool.dtype != old.dtype:
        raise ValueError(f"the new pool {tuple(pool.shape)} {pool.dtype} does not match the old one's "
                         f"layout {tuple(old.shape)} {old.dtype}")
    jobs = [j for h in engine.llms.values() for j in (h.prefill, h.decode)]
    if any(not hasattr(j, "rebind_pool") for j in jobs):
        raise ValueError("thread jobs cannot move to a new pool (worker.engine.job_mode: process can)")
    with engine._lock:
        busy = {n: v.used for n, v in engine.blocks.llms.items() if v.used}
        if busy or engine._inflight:
            raise RuntimeError(f"cannot move to a new pool: blocks held {busy}, "
                               f"{len(engine._inflight)} dispatches in flight")
        engine.pool, engine.pool_attach = pool, pool_attach
        engine.blocks.capacity = pool.shape[0]
    for job in jobs:  # a running child rebuilds its runner in place; a dead one is started over the pool
        try:
            job.rebind_pool(pool, pool_attach, drop_old)
        except JobCrashedError:
            job.pool, job.pool_attach = pool, pool_attach
            job.restart()
            if not job.wait_ready(120):
                raise RuntimeError(f"job {job.name} did not start over the new pool") from None
    log.info("engine moved to a new pool of %d blocks; %d jobs moved onto it", pool.shape[0], len(jobs))
