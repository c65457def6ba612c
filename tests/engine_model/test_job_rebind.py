"""ProcessJob.rebind_pool (memmgr restarted: services/worker/kv.py): a running job process rebuilds its runner
over another memmgr segment without a respawn (same pid), writes the K/V of its next steps there and not in
the old segment, and unmaps the old one; the tokens are the same as over the old pool."""

from __future__ import annotations

import functools

import torch

from muxserve.tiny import write_tiny_checkpoint
from services.memmgr import segment
from services.worker.engine.jobs import ProcessJob
from services.worker.engine.loader import load_weights
from services.worker.engine.types import SamplingParams, SeqStep, StepInput

BS = 4


def _prefill(job, spec) -> list[int]:
    step = SeqStep(0, [5, 6, 7, 8, 9], 0, list(range(16)), SamplingParams())
    return job.submit(StepInput(spec.name, [step])).result(timeout=120).token_ids


def test_rebind_moves_a_running_job_onto_a_new_segment(tmp_path):
    spec, weights = load_weights(write_tiny_checkpoint(tmp_path / "m", "llama", seed=5))
    old_h, old = segment.create_segment(64, BS, spec.head_dim, "float32")
    new_h, new = segment.create_segment(64, BS, spec.head_dim, "float32")
    job = ProcessJob(spec, weights, old, BS, pool_attach=functools.partial(segment.attach, old_h))
    try:
        assert job.wait_ready(120)
        pid, first = job.pid, _prefill(job, spec)
        assert old.abs().sum() > 0 and new.abs().sum() == 0
        old.zero_()
        job.rebind_pool(new, functools.partial(segment.attach, new_h), functools.partial(segment.detach, old_h))
        assert _prefill(job, spec) == first and job.pid == pid  # same tokens, same process
        assert new.abs().sum() > 0 and old.abs().sum() == 0  # the K/V went to the new segment only
    finally:
        job.close()
        for h in (old_h, new_h):
            segment.destroy_segment(h)
