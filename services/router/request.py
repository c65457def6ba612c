"""One request's state inside the router, and the router's errors (one gRPC status code each).

The servicer converts the wire request into a `RouteRequest`, and maps any `RouterError` to its
status code in one place; nothing below the servicer imports protobuf messages for requests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import grpc

from services.worker.engine.types import SamplingParams


class RouterError(Exception):
    """An error the client sees as `code` with `message`."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, code: grpc.StatusCode | None = None, param: str | None = None):
        super().__init__(message)
        self.param = param  # the request field at fault, when known (OpenAI error bodies name it)
        if code is not None:
            self.code = code


class InvalidArgument(RouterError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(RouterError):
    code = grpc.StatusCode.NOT_FOUND


class Unavailable(RouterError):
    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(RouterError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(RouterError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


@dataclass
class RouteRequest:
    """A Generate request from arrival to its last chunk.

    Exactly one of `prompt` (text, tokenized by the worker), `prompt_token_ids` and `messages` (chat
    messages [{"role", "content"}], rendered by the worker with the model's chat template) is set once
    valid; `add_special_tokens` None means the default (admission.prompt_ids).
    `worker` is the address it was forwarded to; token counts fill in as chunks stream back.
    """

    model: str
    prompt: str = ""
    prompt_token_ids: list[int] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    add_special_tokens: bool | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = ""
    worker: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    arrival: float = field(default_factory=time.monotonic)
    forwarded_at: float = 0.0  # when the worker call that served it started
    first_token_at: float = 0.0

    def timing(self, worker_queue_s: float, now: float | None = None) -> tuple[float, float, float, float]:
        """(queue, ttft, tpot, e2e) seconds from the router's arrival, at the last chunk."""
        now = time.monotonic() if now is None else now
        first = self.first_token_at or now
        queue = (self.forwarded_at or self.arrival) - self.arrival + worker_queue_s
        tpot = (now - first) / (self.completion_tokens - 1) if self.completion_tokens > 1 else 0.0
        return queue, first - self.arrival, tpot, now - self.arrival

    @property
    def known_prompt_len(self) -> int:
        """Prompt length when the router can know it (token ids), else 0."""
        return len(self.prompt_token_ids)

    @property
    def finished(self) -> bool:
        return bool(self.finish_reason)

    def observe(self, token_ids: int, finish_reason: str = "", prompt_tokens: int = 0,
                completion_tokens: int = 0) -> None:
        """Account one streamed chunk: `token_ids` new tokens; usage, when given, is authoritative."""
        self.completion_tokens += token_ids
        if token_ids and not self.first_token_at:
            self.first_token_at = time.monotonic()
        if finish_reason:
            self.finish_reason = finish_reason
            self.completion_tokens = completion_tokens or self.completion_tokens
            self.prompt_tokens = prompt_tokens or self.prompt_tokens or self.known_prompt_len
