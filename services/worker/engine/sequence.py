"""The one request-state object of the engine: `Sequence`.

Progress is "computed tokens catching up with total tokens": prefill, decode and recompute after
preemption are all "compute the next `n` uncomputed tokens (and maybe sample)". A sequence whose
computed count reaches its token count samples one new token, which makes it one token behind again.
"""

from __future__ import annotations

import enum
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

from services.worker.engine.types import RequestTiming, SamplingParams


class SeqStatus(enum.Enum):
    WAITING = "waiting"  # never scheduled yet
    RUNNING = "running"  # holds blocks, advancing
    PREEMPTED = "preempted"  # blocks taken back; recomputes from scratch when scheduled again
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One request inside the engine. Identity-hashed (eq=False) so it can key dicts and sets."""

    seq_id: int
    request_id: str
    llm: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    arrival: float = field(default_factory=time.monotonic)
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    status: SeqStatus = SeqStatus.WAITING
    block_table: array = field(default_factory=lambda: array("i"))  # int32 ids (pool.py's order): copied and
    # shipped to jobs every step, where a list of ints would be converted or pickled id by id
    finish_reason: str = ""  # "" | "stop" | "length" | "abort" | "error"
    error: Any = None  # types.EngineError saying why, when finish_reason == "error"
    detok: Any = None  # detok.IncrementalDetokenizer
    in_flight: bool = False  # part of a dispatch that has not returned yet
    num_emitted_tokens: int = 0  # output tokens already handed to the caller
    first_scheduled: float = 0.0  # time.monotonic() of its first dispatch (0: not yet)
    first_token_time: float = 0.0  # ... when its first output token was sampled
    finish_time: float = 0.0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids) - self.num_computed_tokens

    @property
    def max_total_tokens(self) -> int:
        """Tokens the sequence can reach: prompt + max_tokens (its KV holds one fewer)."""
        return self.num_prompt_tokens + self.sampling.max_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SeqStatus.FINISHED

    @property
    def is_prefill(self) -> bool:
        """More than the last token is uncomputed: a prompt (or a recompute) pass."""
        done = self.num_computed_tokens  # (inlined: this runs per sequence per scheduling pass)
        return done == 0 or len(self.prompt_token_ids) + len(self.output_token_ids) - done > 1

    def tokens(self, start: int, n: int) -> list[int]:
        """Token ids at positions start .. start+n-1 (prompt then output)."""
        p = self.num_prompt_tokens
        if start + n <= p:
            return self.prompt_token_ids[start:start + n]
        if start >= p:
            return self.output_token_ids[start - p:start - p + n]
        return self.prompt_token_ids[start:] + self.output_token_ids[:start + n - p]

    def finish(self, reason: str, error: Any = None) -> None:
        self.status = SeqStatus.FINISHED
        self.finish_reason = reason
        self.error = error
        self.finish_time = time.monotonic()

    def timing(self) -> RequestTiming:
        """The finished request's timing (types.RequestTiming)."""
        end = self.finish_time or time.monotonic()
        first = self.first_token_time or end
        decode_tokens = max(self.num_output_tokens - 1, 0)
        return RequestTiming(queue_s=(self.first_scheduled or end) - self.arrival, ttft_s=first - self.arrival,
                             tpot_s=(end - first) / decode_tokens if decode_tokens else 0.0,
                             e2e_s=end - self.arrival)
