"""ModelRunner: executes one StepInput (a flat batch of prefill chunks and decode tokens) of one LLM.

`ModelRunner(spec, weights, pool, block_size, device).execute(step) -> StepOutput`. The runner
never allocates the pool: it writes the step's K/V into the given pool tensor (which may be shared
with another process) and reads each sequence's context from the blocks in its block table.
`ThreadJob(runner)` runs steps on one worker thread (types.Job for in-process use); see jobs.py
for job processes.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from . import sampler
from .attention import build_context
from .loader import ModelSpec
from .model import Transformer
from .types import InvalidRequestError, StepInput, StepOutput


def keep_freed_memory() -> None:
    """Make glibc serve big tensors from its heap and keep freed memory (Linux, CPU runs).

    By default every allocation over ~128 KiB-32 MiB is a fresh mmap that is unmapped on free, so each
    step's activations are page-faulted in again; on a small VM that costs more than the step's math.
    The same effect as MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_, set from inside the process.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)


def freeze_heap() -> None:
    """Move every object alive now (modules, weights' wrappers, the loaded engine) out of the garbage
    collector's reach, as vLLM's engine core does after start-up: the objects a serving process keeps
    for its whole life are no longer traversed by each full collection that its per-step objects
    trigger. Call once a process has loaded what it serves; objects created later are collected as usual."""
    gc.collect()
    gc.freeze()


class ModelRunner:
    def __init__(
        self,
        spec: ModelSpec,
        weights: dict[str, torch.Tensor],
        pool: torch.Tensor,
        block_size: int,
        device: str | torch.device = "cpu",
    ):
        if pool.shape[2] != block_size:
            raise ValueError(f"pool block_size {pool.shape[2]} != runner block_size {block_size}")
        self.spec, self.pool, self.block_size = spec, pool, block_size
        self.device = torch.device(device)
        if self.device.type == "cpu":
            keep_freed_memory()
        if spec.engine == "generic":
            from .generic import GenericModel

            self.model = GenericModel(spec, weights, pool)
        else:
            self.model = Transformer(spec, weights, pool)

    def _check(self, step: StepInput) -> None:
        for s in step.seqs:
            end = s.start_pos + len(s.token_ids)
            if s.start_pos < 0 or end > self.spec.max_model_len:
                raise InvalidRequestError(f"seq {s.seq_id}: positions {s.start_pos}..{end} outside "
                                          f"[0, {self.spec.max_model_len}) of {self.spec.name}")
            bad = [t for t in s.token_ids if not 0 <= t < self.spec.vocab_size]
            if bad:
                raise InvalidRequestError(f"seq {s.seq_id}: token ids {bad[:4]} outside vocab {self.spec.vocab_size}")

    @torch.inference_mode()
    def execute(self, step: StepInput) -> StepOutput:
        t0 = time.perf_counter()
        self._check(step)
        tokens = torch.tensor([t for q in step.seqs for t in q.token_ids], dtype=torch.long).to(self.device)
        logits = self._decode(step, tokens) if self._fusable(step) else self._forward(step, tokens)  # [B, V]
        want = [i for i, q in enumerate(step.seqs) if q.want_sample]
        picks = sampler.sample(
            logits[want], [step.seqs[i].sampling for i in want], [step.seqs[i].sample_index for i in want]
        )
        token_ids: list[int | None] = [None] * len(step.seqs)
        for i, t in zip(want, picks):
            token_ids[i] = t
        out_logits = logits.cpu() if step.return_logits else None
        return StepOutput(token_ids, out_logits, time.perf_counter() - t0)

    def _fusable(self, step: StepInput) -> bool:
        return self.model.can_fuse() and all(len(q.token_ids) == 1 for q in step.seqs)

    def _decode(self, step: StepInput, tokens: torch.Tensor) -> torch.Tensor:
        """A decode-only step through the fused native layers (fused.py)."""
        fused, positions = self.model.fused, torch.tensor([q.start_pos for q in step.seqs])
        tables = fused.tables(positions, [q.block_table for q in step.seqs], [q.seq_id for q in step.seqs])
        return fused(tokens, positions, tables)

    def _forward(self, step: StepInput, tokens: torch.Tensor) -> torch.Tensor:
        s = self.spec

        def context(window: int | None):
            return build_context(
                [(q.start_pos, len(q.token_ids), q.block_table) for q in step.seqs],
                s.num_layers, s.num_kv_heads, self.block_size, self.pool.shape[0], window, self.device,
                [q.seq_id for q in step.seqs], s.head_dim,
            )

        if s.engine == "generic":  # each layer's sliding window asks for its own masks (generic.PagedStep)
            return self.model.forward(tokens, context)
        return self.model.forward(tokens, context(s.sliding_window))


class ThreadJob:
    """types.Job on one background thread: steps run in submission order."""

    def __init__(self, runner: ModelRunner):
        self.runner = runner
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"job-{runner.spec.name}")
        self.alive = True

    def submit(self, step: StepInput) -> Future:
        return self._pool.submit(self.runner.execute, step)

    def close(self) -> None:
        self.alive = False
        self._pool.shutdown(wait=True, cancel_futures=True)
