"""Every check the router makes on a request before forwarding it (the one place they live).

Contract of `validate(req, models)`: returns None for a request the router may forward, or raises
ModelNotFound (model not configured) / InvalidArgument (anything else), with a message naming the
field and the bad value. Text prompts are tokenized by the worker, which rejects over-long ones itself
(the router passes its status through); token-id prompts are checked here against the context.
"""

from __future__ import annotations

from muxserve import validation as shared
from muxserve.validation import RequestBounds
from services.router.config import ModelLimits
from services.router.request import InvalidArgument, ModelNotFound, RouteRequest
from services.worker.engine.types import InvalidRequestError


def validate(req: RouteRequest, models: dict[str, ModelLimits], bounds: RequestBounds = RequestBounds()) -> None:
    limits = check_model(req.model, models)
    check_prompt(req)
    try:  # the checks the worker makes too (muxserve/validation.py)
        shared.check_request(req.request_id, req.messages or req.prompt, req.sampling, bounds)
    except InvalidRequestError as exc:
        raise InvalidArgument(str(exc)) from None
    check_lengths(req, limits)


def check_model(name: str, models: dict[str, ModelLimits]) -> ModelLimits:
    if not name:
        raise InvalidArgument("model is required")
    if name not in models:
        raise ModelNotFound(f"model {shared.short(name)} is not served here; served models: "
                            f"{', '.join(sorted(models))}")
    return models[name]


def check_prompt(req: RouteRequest) -> None:
    if not req.prompt and not req.prompt_token_ids and not req.messages:
        raise InvalidArgument("prompt is empty: set a non-empty `prompt`, `prompt_token_ids` or `messages`")
    for i, m in enumerate(req.messages):
        if not m.get("role"):
            raise InvalidArgument(f"messages[{i}].role is required")


def check_sampling(req: RouteRequest, bounds: RequestBounds = RequestBounds()) -> None:
    """The shared sampling checks (muxserve/validation.py: the worker runs the same)."""
    try:
        shared.check_sampling(req.sampling, bounds)
    except InvalidRequestError as exc:
        raise InvalidArgument(str(exc)) from None


def check_lengths(req: RouteRequest, limits: ModelLimits) -> None:
    """max_tokens and a token-id prompt must fit the model's context (when it is known)."""
    ctx, n, m = limits.max_model_len, req.known_prompt_len, req.sampling.max_tokens
    if ctx and m > ctx:
        raise InvalidArgument(f"sampling.max_tokens ({m}) exceeds the context of model {req.model!r} "
                              f"({ctx} tokens)")
    if ctx and n >= ctx:
        raise InvalidArgument(f"prompt is too long: {n} tokens, the context of model {req.model!r} is "
                              f"{ctx} tokens (prompt and output together)")
    if ctx and n + m > ctx:
        raise InvalidArgument(f"prompt ({n} tokens) + sampling.max_tokens ({m}) exceeds the context of "
                              f"model {req.model!r} ({ctx} tokens)")
    if limits.vocab_size and n:
        bad = next((t for t in req.prompt_token_ids if t >= limits.vocab_size), None)
        if bad is not None:
            raise InvalidArgument(f"prompt_token_ids: token {bad} is outside the vocabulary of model "
                                  f"{req.model!r} (size {limits.vocab_size})")
