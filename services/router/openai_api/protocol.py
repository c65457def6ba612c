"""OpenAI request bodies (pydantic) and their conversion to the router's RouteRequests.

Supported: /v1/completions `prompt` (a string, a list of strings, token ids or lists of token ids),
`max_tokens` (default 16, as OpenAI's), `temperature` (default 1), `top_p`, `top_k` (vLLM's extension;
-1 or 0 = off), `seed`, `stop` (a string or a list), `n`, `stream`, `stream_options.include_usage`,
`echo` (false only), `ignore_eos` and `add_special_tokens` (vLLM's extensions; default true for a text
prompt); /v1/chat/completions `messages` (text content, or a list of text parts), `max_tokens` or
`max_completion_tokens` (default: `DEFAULT_CHAT_MAX_TOKENS`, capped at the context), the same sampling
fields, `add_special_tokens` (default false: the chat template writes them). Refused with 400: echo,
logprobs (the engine does not return them), penalties other than 0, best_of, suffix, tools.
Unknown extra fields are ignored, as vLLM does.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from services.router.request import InvalidArgument, RouteRequest
from services.worker.engine.types import SamplingParams

DEFAULT_CHAT_MAX_TOKENS = 256
MAX_N = 16


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**64)
    stop: Union[str, list[str], None] = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: str | None = None

    def refuse_unsupported(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise InvalidArgument(f"{name} is not supported (only 0)", param=name)

    def sampling(self, max_tokens: int, choice: int) -> SamplingParams:
        """Choice i of n samples with seed + i, so that n > 1 gives different samples reproducibly."""
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        top_k = self.top_k if self.top_k is not None and self.top_k > 0 else 0
        if self.top_k is not None and self.top_k < -1:
            raise InvalidArgument(f"top_k must be -1, 0 (off) or > 0, got {self.top_k}", param="top_k")
        return SamplingParams(
            max_tokens=max_tokens, temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p, top_k=top_k,
            seed=None if self.seed is None else (self.seed + choice) % 2**64, stop=stop, ignore_eos=self.ignore_eos)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: int | None = 16
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None
    add_special_tokens: bool = True

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str) or (p and all(isinstance(t, int) for t in p)):
            return [p]
        return list(p)

    def route_requests(self, request_id: str) -> list[list[RouteRequest]]:
        """For each prompt, its n requests (choice index = prompt index * n + j)."""
        self.refuse_unsupported()
        for name in ("logprobs", "best_of", "suffix"):
            if getattr(self, name) is not None:
                raise InvalidArgument(f"{name} is not supported by this server", param=name)
        if self.echo:
            raise InvalidArgument("echo is not supported by this server", param="echo")
        prompts = self.prompts()
        if not prompts:
            raise InvalidArgument("prompt is empty", param="prompt")
        return [[RouteRequest(model=self.model, prompt=p if isinstance(p, str) else "",
                              prompt_token_ids=[] if isinstance(p, str) else list(p),
                              add_special_tokens=self.add_special_tokens,
                              sampling=self.sampling(16 if self.max_tokens is None else self.max_tokens, j),
                              request_id=f"{request_id}-{i}-{j}")
                 for j in range(self.n)] for i, p in enumerate(prompts)]


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: Union[str, list[TextPart], None] = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list | None = None
    add_special_tokens: bool = False

    def route_requests(self, request_id: str, context_len: int) -> list[list[RouteRequest]]:
        self.refuse_unsupported()
        if self.logprobs or self.top_logprobs:
            raise InvalidArgument("logprobs are not supported by this server", param="logprobs")
        if self.tools:
            raise InvalidArgument("tools are not supported by this server", param="tools")
        if not self.messages:
            raise InvalidArgument("messages is empty", param="messages")
        limit = self.max_completion_tokens or self.max_tokens
        if limit is None:
            limit = min(DEFAULT_CHAT_MAX_TOKENS, context_len // 2) if context_len else DEFAULT_CHAT_MAX_TOKENS
        messages = [{"role": m.role, "content": m.text()} for m in self.messages]
        return [[RouteRequest(model=self.model, messages=messages, add_special_tokens=self.add_special_tokens,
                              sampling=self.sampling(limit, j), request_id=f"{request_id}-0-{j}")
                 for j in range(self.n)]]
