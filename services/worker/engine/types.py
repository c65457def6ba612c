"""Plain data shared by the engine's parts (scheduler, runner, job processes, block sources).

Everything here is picklable and protobuf-free: job processes receive StepInput over local IPC and
return StepOutput. The head-wise KV pool layout is defined in `pool.py` (the one place); this module
only carries block ids as plain `list[int]`.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling. temperature 0 = greedy; top_k 0 = off; top_p 1 = off."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def validate(self) -> None:
        """Raise InvalidRequestError naming the bad field."""
        if self.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not self.temperature >= 0:  # NaN too
            raise InvalidRequestError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidRequestError(f"top_k must be >= 0, got {self.top_k}")


@dataclass
class SeqStep:
    """One sequence's share of a step: compute `token_ids` at positions start_pos.. and maybe sample.

    block_table lists the sequence's head-wise block ids in pool.py's order and covers at least
    start_pos + len(token_ids) tokens: a list of ints, or (what the engine sends: copied, pickled and read
    as one buffer) an array("i"). sample_index is how many tokens the sequence has generated
    before this step (it seeds reproducible sampling, so any process gives the same draw).
    """

    seq_id: int
    token_ids: list[int]
    start_pos: int
    block_table: Sequence[int]  # list[int] | array("i")
    sampling: SamplingParams
    sample_index: int = 0
    want_sample: bool = True


@dataclass
class StepInput:
    """One job dispatch: a batch of sequences of one LLM (prefill chunks and/or decode tokens)."""

    llm: str
    seqs: list[SeqStep]
    return_logits: bool = False
    share: Any = None  # compute_share.ComputeShare the job should run with (a process job re-pins), or None


@dataclass
class StepOutput:
    """token_ids[i] is the token sampled for seqs[i] (None where want_sample was False).

    logits: [num_seqs, vocab] float32 logits at each sequence's last position, when asked for.
    """

    token_ids: list[int | None]
    logits: Any = None  # torch.Tensor | None
    elapsed_s: float = 0.0


class Job(Protocol):
    """A prefill or decode job of one LLM: runs steps asynchronously (a thread or a process)."""

    def submit(self, step: StepInput) -> Future:  # Future[StepOutput]
        ...

    def close(self) -> None:
        ...


class BlockSource(Protocol):
    """Where head-wise blocks come from: a local free list, or a lease from memmgr.

    acquire returns exactly n block ids, or None when they do not fit (nothing taken).
    release returns ids previously acquired from this source.
    """

    def acquire(self, n: int) -> list[int] | None:
        ...

    def release(self, ids: list[int]) -> None:
        ...


class EngineError(Exception):
    """Base of the engine's errors; the servicer maps each subclass to one gRPC status code."""


class InvalidRequestError(EngineError):
    """Bad request input (INVALID_ARGUMENT)."""


class UnknownModelError(EngineError):
    """The model is not hosted here (NOT_FOUND)."""


class ModelNotReadyError(EngineError):
    """The model is being loaded here, or drained away from here, in a re-placement (UNAVAILABLE):
    the router retries it on the placement's current host."""


class ModelLoadError(EngineError):
    """The model is assigned here but failed to load (unsupported architecture, missing or corrupt weights, too
    big for the pool): FAILED_PRECONDITION, the message names the model and the reason. Other LLMs still serve."""


class CapacityError(EngineError):
    """Out of a resource that will not free up for this request (RESOURCE_EXHAUSTED)."""


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture (or one of its options) cannot run on this engine; the message names the
    architecture and why (loader.py, support.py)."""


class JobCrashedError(EngineError):
    """A job process died while running this request's step (UNAVAILABLE)."""


class PoolLostError(EngineError):
    """The unit's KV blocks are gone (e.g. the memmgr lease expired) (UNAVAILABLE)."""


@dataclass(frozen=True)
class RequestTiming:
    """Where a request's time went, in seconds, measured where it was served (on the final chunk).

    queue_s: arrival -> first scheduled; ttft_s: arrival -> first token; tpot_s: mean time per output
    token after the first ((e2e - ttft) / (tokens - 1), 0 for one token); e2e_s: arrival -> finish."""

    queue_s: float = 0.0
    ttft_s: float = 0.0
    tpot_s: float = 0.0
    e2e_s: float = 0.0


@dataclass
class Chunk:
    """What a request yields to its caller per step: new tokens, their text, and at the end why
    (and, on the final chunk, its timing)."""

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = ""  # "" | "stop" | "length" | "abort" | "error" (engine-internal: the servicer
    # turns "error" into a gRPC status from `error`, and clients never see it as a finish_reason)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: Any = None  # EngineError saying why, when finish_reason == "error" (a job crashed, pool lost, ...)
    timing: RequestTiming | None = None  # on the final chunk
