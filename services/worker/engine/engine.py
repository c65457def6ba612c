"""UnitEngine: the LLMs of one unit, their jobs, one shared head-wise KV pool and the ADBS loop.

Blocks come from a local pool (the default: one LocalBlockSource shared by all LLMs, quotas split
here by rate) or from `block_source`: one BlockSource shared by all LLMs, or BlockSources (one source
per LLM, e.g. memmgr leases: services/worker/kv.py; quotas then come from `set_quotas`). `pool` is a
pool tensor to use instead of allocating one, and `pool_attach` a picklable callable that maps the
same pool in a job process (needed when `pool` is not torch-shared, e.g. memmgr's segment).

In-process, no gRPC: `add_request` enqueues (validating first), `step` advances the event-driven
loop (docs/multiplexing.md): every idle job whose compute share is admitted gets its next batch, and
as soon as ANY batch returns its tokens are applied; it returns a Chunk per request that advanced or
finished. add_request/abort/stats may be called from other threads while a step runs (the async
engine does; they wake a waiting step); one step runs at a time. `set_placement` changes the jobs'
shares and the unit's mode between dispatches.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Callable

import torch

from services.worker.engine import admission, loader, pool as pool_mod
from services.worker.engine.admission import merge_chunks
from services.worker.engine.block_manager import BlockManager, BlockSources
from services.worker.engine.config import EngineConfig, LLMConfig
from services.worker.engine.detok import IncrementalDetokenizer
from services.worker.engine.launch import load_tokenizer, make_jobs
from services.worker.engine.scheduler import Dispatch, Scheduler
from services.worker.engine.sequence import Sequence
from services.worker.engine.types import (
    CapacityError, Chunk, EngineError, InvalidRequestError, Job, JobCrashedError, PoolLostError, SamplingParams, SeqStep,
    StepInput, UnknownModelError,
)
from services.worker.engine.unit_compute import UnitCompute

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.01  # a step with nothing in flight and nothing to dispatch returns after this at most


@dataclass
class HostedLLM:
    """One loaded LLM: its spec, tokenizer and its prefill and decode jobs."""

    cfg: LLMConfig
    spec: loader.ModelSpec
    tokenizer: object
    prefill: Job
    decode: Job
    max_model_len: int
    draining: bool = False

    def close(self) -> None:
        self.prefill.close()
        self.decode.close()


class UnitEngine:
    def __init__(self, llms: list[LLMConfig], config: EngineConfig | None = None,
                 block_source=None, pool: torch.Tensor | None = None,
                 pool_attach: Callable[[], torch.Tensor] | None = None):
        self.config = (config or EngineConfig()).resolve_dtype([c.path for c in llms])
        specs = [loader.read_spec(c.path, self.config.torch_dtype) for c in llms]
        if not specs and pool is None:
            raise InvalidRequestError("a unit needs at least one LLM (or a pool)")
        self.head_dim = pool.shape[-1] if pool is not None else specs[0].head_dim
        self.pool = pool if pool is not None else self._allocate_pool()
        self.pool_attach = pool_attach
        capacity = getattr(block_source, "capacity", None) or self.pool.shape[0]
        self.block_source: BlockSources | object = block_source or pool_mod.LocalBlockSource(self.pool.shape[0])
        self.blocks = BlockManager(self.block_source, capacity, self.config.block_size)
        self.blocks.wake = self._wake  # a memmgr refill arrived: plan again
        self.scheduler = Scheduler(self.blocks, self.config.max_num_seqs, self.config.max_prefill_tokens,
                                   self.config.mode, self.config.decode_deadline_scale)
        self.compute = UnitCompute(self.config)
        self.budget = self.compute.budget
        self._inflight: dict[tuple[str, str], tuple[Dispatch, Future]] = {}  # (llm, kind): one per job
        self._kick: Future = Future()  # set to wake a step waiting on dispatches
        self.llms: dict[str, HostedLLM] = {}
        self._seqs: dict[str, Sequence] = {}
        self._ids = itertools.count()
        self._lock = threading.RLock()  # engine state
        self._step_lock = threading.Lock()  # one step at a time
        self._carry: dict[str, Chunk] = {}  # chunks produced by remove_llm's own steps
        self.busy_s: dict[tuple[str, str], float] = {}  # (llm, kind) -> seconds its job had a batch in flight
        self.dispatches: dict[tuple[str, str], int] = {}  # (llm, kind) -> dispatches its job ran
        for c in llms:
            self.add_llm(c)

    def _allocate_pool(self) -> torch.Tensor:
        c = self.config
        return pool_mod.allocate_pool(c.pool_blocks(self.head_dim), c.block_size, self.head_dim,
                                      c.torch_dtype, c.device, shared=c.job_mode == "process")

    # ---- LLMs -------------------------------------------------------------------------------
    def add_llm(self, cfg: LLMConfig, quota: int | None = None) -> None:
        """Load cfg's tokenizer and weights and start its jobs. Quotas: with a shared source all are
        re-split by rate; with per-LLM sources this LLM gets `quota` (None: the pool's capacity)."""
        if cfg.name in self.llms:
            raise InvalidRequestError(f"LLM {cfg.name!r} is already hosted")
        spec = loader.read_spec(cfg.path, self.config.torch_dtype)
        if spec.head_dim != self.head_dim or self.pool.dtype != self.config.torch_dtype:
            raise InvalidRequestError(
                f"LLM {cfg.name!r} (head_dim {spec.head_dim}, {self.config.dtype}) cannot share this unit's "
                f"pool (head_dim {self.head_dim}, {self.pool.dtype}): head_dim and dtype must match")
        plan = self.compute.plan([*self.llms, cfg.name])
        shares = [plan.get(f"{cfg.name}/{k}") for k in ("prefill", "decode")]
        self._check_fits(cfg.name, spec)
        spec, prefill, decode = make_jobs(cfg, self.config, self.pool, self.pool_attach, shares)
        try:
            tokenizer = load_tokenizer(cfg.path)
        except BaseException:
            prefill.close()
            decode.close()
            raise
        hosted = HostedLLM(cfg, spec, tokenizer, prefill, decode,
                           min(self.config.max_model_len or spec.max_model_len, spec.max_model_len))
        with self._lock:
            self.llms[cfg.name] = hosted
            try:
                self.blocks.add_llm(cfg.name, spec.num_layers, spec.num_kv_heads, quota)
            except BaseException:
                del self.llms[cfg.name]
                hosted.close()
                raise
            self.scheduler.add_llm(cfg.name)
            self.compute.set_plan(plan)
            self._rebalance()

    def _check_fits(self, name: str, spec) -> None:
        """CapacityError when one token block of the LLM (layers x KV heads head-wise blocks) exceeds the whole
        pool: it could never run a sequence on this unit."""
        need = spec.num_layers * spec.num_kv_heads
        if need > self.blocks.capacity:
            raise CapacityError(
                f"model {name!r} is too big for this unit's KV pool: one block of {self.config.block_size} tokens "
                f"takes {need} head-wise blocks ({spec.num_layers} layers x {spec.num_kv_heads} KV heads), the "
                f"pool has {self.blocks.capacity}")

    def remove_llm(self, name: str, drain: bool = True) -> None:
        """Stop hosting `name`: finish (drain=True) or abort its requests, then close its jobs.

        Runs steps itself until the LLM is idle; chunks those steps produce for other requests come
        back from the next `step()`. (The async engine uses begin_remove/finish_remove instead.)
        """
        self.begin_remove(name, drain)
        while self.scheduler.has_unfinished(name):
            for rid, ch in self.step().items():
                self._carry[rid] = merge_chunks(self._carry.get(rid), ch)
        self.finish_remove(name)

    def begin_remove(self, name: str, drain: bool) -> None:
        """Refuse new requests for `name`; abort its current ones unless drain."""
        with self._lock:
            self._hosted(name).draining = True
            if not drain:
                for seq in [s for s in self._seqs.values() if s.llm == name]:
                    self.scheduler.abort(seq)

    def finish_remove(self, name: str) -> None:
        """Drop an idle LLM (after begin_remove and its last step) and close its jobs."""
        with self._lock:
            hosted = self._hosted(name)
            self.scheduler.remove_llm(name)
            self.blocks.remove_llm(name)
            del self.llms[name]
            self._rebalance()
        hosted.close()

    def set_placement(self, compute_shares: dict[str, float], mode: str | None = None) -> None:
        """New shares ("<llm>/<kind>" -> fraction) and unit mode from a placement: they take effect at
        each job's next dispatch (a process job re-pins its cores then); nothing in flight fails."""
        with self._lock:
            self.compute.set_shares(compute_shares, list(self.llms))
            if mode:
                self.scheduler.set_mode(mode)
        self._wake()

    def _rebalance(self) -> None:
        if not self.blocks.shared:
            return  # per-LLM sources: quotas are set from outside (memmgr)
        rates = {n: h.cfg.rate for n, h in self.llms.items()}
        self.blocks.set_quotas(self.blocks.proportional_quotas(rates))

    def set_quotas(self, quotas: dict[str, int]) -> None:
        """Set LLMs' quotas in head-wise blocks (the memmgr's ADBS donation calls this)."""
        with self._lock:
            self.blocks.set_quotas(quotas)

    @property
    def quotas(self) -> dict[str, int]:
        return self.blocks.quotas

    def _hosted(self, name: str) -> HostedLLM:
        hosted = self.llms.get(name)
        if hosted is None:
            from muxserve.validation import short  # client input echoed: keep the status message small

            raise UnknownModelError(f"model {short(name)} is not hosted here; hosted: {sorted(self.llms)}")
        return hosted

    # ---- requests ---------------------------------------------------------------------------
    def add_request(self, request_id: str, llm: str, prompt: str | list[dict] | None = None,
                    prompt_token_ids: list[int] | None = None, sampling: SamplingParams | None = None,
                    add_special_tokens: bool | None = None) -> None:
        """Validate and enqueue; raises UnknownModelError / InvalidRequestError / CapacityError.
        `prompt` is text or chat messages; tokenization: admission.prompt_ids."""
        sampling = sampling or SamplingParams()
        hosted = self._hosted(llm)
        if hosted.draining:
            raise UnknownModelError(f"model {llm!r} is being removed from this unit")
        if not isinstance(sampling, SamplingParams):
            raise InvalidRequestError(f"sampling must be SamplingParams, got {type(sampling).__name__}")
        sampling.validate()
        ids = admission.prompt_ids(hosted.tokenizer, hosted.spec.vocab_size, prompt, prompt_token_ids,
                                   add_special_tokens)
        need = self.blocks[llm].blocks_for(len(ids) + sampling.max_tokens - 1)
        admission.check_lengths(len(ids), sampling.max_tokens, hosted.max_model_len, need, self.blocks.capacity)
        with self._lock:
            if request_id in self._seqs:
                raise InvalidRequestError(f"request id {request_id!r} is already in use")
            seq = Sequence(next(self._ids), request_id, llm, ids, sampling)
            seq.detok = IncrementalDetokenizer(hosted.tokenizer, tuple(sampling.stop))
            self._seqs[request_id] = seq
            self.scheduler.add(seq)
        self._wake()

    def abort(self, request_id: str) -> None:
        """Abort a request (unknown or finished ids are ignored); its blocks return to the pool."""
        with self._lock:
            seq = self._seqs.get(request_id)
            if seq is not None:
                self.scheduler.abort(seq)
        self._wake()

    def fail_all(self, error: str | EngineError) -> None:
        """Finish every request with finish_reason "error" (e.g. the unit's KV lease was lost: a
        PoolLostError); blocks of sequences in flight return when their dispatch does."""
        error = error if isinstance(error, EngineError) else PoolLostError(str(error))
        with self._lock:
            for seq in list(self._seqs.values()):
                if not seq.is_finished:
                    self.scheduler.finish(seq, "error", error)

    def has_unfinished(self) -> bool:
        with self._lock:
            return self.scheduler.has_unfinished() or bool(self._inflight) or self._has_output()

    # ---- the loop ---------------------------------------------------------------------------
    def step(self, timeout: float | None = None) -> dict[str, Chunk]:
        """Advance the event loop: dispatch to every idle job whose share fits, wait until ANY
        dispatch returns (or a request arrives, is aborted, or `timeout` passes), apply what
        returned, dispatch again to the jobs that became idle. Returns a Chunk per request that
        advanced or finished."""
        with self._step_lock:
            with self._lock:
                self._dispatch()
                pending = [f for _, f in self._inflight.values()]
                kick = self._kick
            if pending:
                wait([*pending, kick], timeout=timeout, return_when=FIRST_COMPLETED)
            elif not self._has_output():  # nothing can run (e.g. waiting for blocks): wait for news
                wait([kick], timeout=IDLE_WAIT_S if timeout is None else min(timeout, IDLE_WAIT_S))
            with self._lock:
                if self._kick.done():
                    self._kick = Future()
                out = self._collect()
                self._dispatch()  # jobs that became idle start their next batch before we return
                for rid, ch in self._carry.items():
                    out[rid] = merge_chunks(ch, out.get(rid))
                self._carry.clear()
                return out

    def _has_output(self) -> bool:
        return bool(self.scheduler.finished or self._carry)

    def _wake(self) -> None:
        """Wake a step waiting on in-flight dispatches (new work may be dispatchable now)."""
        with self._lock:
            if not self._kick.done():
                self._kick.set_result(None)

    def _dispatch(self) -> None:
        for d in self.scheduler.schedule(self.budget.busy, self.budget):
            fut = self._submit(d)
            self._inflight[(d.llm, d.kind)] = (d, fut)
            fut.add_done_callback(lambda _, key=(d.llm, d.kind), t0=time.monotonic(): self._busy(key, t0))

    def _busy(self, key: tuple[str, str], t0: float) -> None:
        self.busy_s[key] = self.busy_s.get(key, 0.0) + time.monotonic() - t0
        self.dispatches[key] = self.dispatches.get(key, 0) + 1

    def _collect(self) -> dict[str, Chunk]:
        """Apply every dispatch that has returned; their jobs become idle."""
        done = [(key, d, f) for key, (d, f) in self._inflight.items() if f.done()]
        results = []
        for key, d, f in done:
            del self._inflight[key]
            self.budget.give(*key)
            results.append(f.exception() or f.result())
        return self._apply([d for _, d, _ in done], results)

    def _submit(self, d: Dispatch) -> Future:
        hosted = self.llms[d.llm]
        steps = [SeqStep(s.seq_id, s.tokens(s.num_computed_tokens, n), s.num_computed_tokens, s.block_table[:],
                         s.sampling, s.num_output_tokens, s.num_computed_tokens + n == s.num_tokens)
                 for s, n in d.plan.items()]
        job = hosted.prefill if d.kind == "prefill" else hosted.decode
        try:
            return job.submit(StepInput(d.llm, steps, share=self.compute.share_of(d.llm, d.kind)))
        except Exception as e:  # a dead job: its sequences fail, the unit keeps serving
            fut: Future = Future()
            fut.set_exception(e)
            return fut

    def _revive(self, d: Dispatch) -> None:
        """A job process died: its sequences failed; start a new one so the LLM keeps serving."""
        hosted = self.llms.get(d.llm)
        job = getattr(hosted, d.kind, None)
        if job is not None and hasattr(job, "restart") and not job.alive:
            log.warning("restarting the %s job of %s after it died", d.kind, d.llm)
            job.restart()

    def _apply(self, dispatches: list[Dispatch], results: list) -> dict[str, Chunk]:
        out: dict[str, Chunk] = {}
        now = time.monotonic()
        for d, res in zip(dispatches, results):
            if isinstance(res, BaseException):
                why = f"{d.llm} {d.kind} job failed: {type(res).__name__}: {res}"
                self.scheduler.fail(d, JobCrashedError(why) if isinstance(res, JobCrashedError) else EngineError(why))
                if isinstance(res, JobCrashedError):
                    self._revive(d)
                continue
            for seq in self.scheduler.complete(d, res.token_ids):
                seq.first_token_time = seq.first_token_time or now
                out[seq.request_id] = self._advance(seq)
        for seq in self.scheduler.finished:
            out[seq.request_id] = self._chunk(seq, "")
            self._seqs.pop(seq.request_id, None)
        self.scheduler.finished.clear()
        return out

    def _advance(self, seq: Sequence) -> Chunk:
        """seq sampled a token: detokenize, check stop / EOS / length, and build its chunk."""
        text = seq.detok.update(seq.output_token_ids)
        eos = seq.output_token_ids[-1] in self.llms[seq.llm].spec.eos_token_ids
        if seq.detok.stopped or (eos and not seq.sampling.ignore_eos):
            self.scheduler.finish(seq, "stop")
        elif seq.num_output_tokens >= seq.sampling.max_tokens:
            self.scheduler.finish(seq, "length")
        if seq.is_finished:
            text += seq.detok.flush(seq.output_token_ids)
            self.scheduler.finished.remove(seq)
            self._seqs.pop(seq.request_id, None)
        return self._chunk(seq, text)

    @staticmethod
    def _chunk(seq: Sequence, text: str) -> Chunk:
        new = seq.output_token_ids[seq.num_emitted_tokens:]
        seq.num_emitted_tokens = seq.num_output_tokens
        return Chunk(new, text, seq.finish_reason, seq.num_prompt_tokens, seq.num_output_tokens, seq.error,
                     seq.timing() if seq.is_finished else None)

    # ---- conveniences -----------------------------------------------------------------------
    def generate(self, llm: str, prompts: list, sampling: SamplingParams | None = None) -> list[tuple[list[int], str]]:
        """Run prompts (str or token id lists) to completion; [(output token ids, text)] in order."""
        rids = [f"gen-{next(self._ids)}" for _ in prompts]
        for rid, p in zip(rids, prompts):
            self.add_request(rid, llm, p if isinstance(p, str) else None, None if isinstance(p, str) else p, sampling)
        toks, texts, pending = {r: [] for r in rids}, {r: "" for r in rids}, set(rids)
        while pending:
            for rid, ch in self.step().items():
                if rid in pending:
                    toks[rid] += ch.token_ids
                    texts[rid] += ch.text
                    if ch.finish_reason:
                        pending.discard(rid)
        return [(toks[r], texts[r]) for r in rids]

    def stats(self) -> dict:
        """Per LLM running/waiting/used blocks/quota; pool capacity/free; preemptions."""
        with self._lock:
            s = self.scheduler
            llms = {n: {"running": len(s.running[n]), "waiting": len(s.waiting[n]),
                        "used_blocks": self.blocks[n].used, "quota": self.blocks[n].quota} for n in self.llms}
            return {"llms": llms, "pool": {"capacity": self.blocks.capacity, "free": self.blocks.num_free},
                    "preemptions": s.num_preemptions}

    def check_integrity(self) -> None:
        with self._lock:
            self.blocks.check_integrity(self.scheduler.all_seqs())

    def close(self) -> None:
        self._wake()
        for hosted in list(self.llms.values()):
            hosted.close()
        self.llms.clear()

