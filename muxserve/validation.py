"""The request checks the router and the worker share (one validation: both call these).

`RequestBounds` holds the configurable bounds, read from the mesh YAML's `router` section by both
services (`bounds_from_section`), so a request the router refuses, the worker's own gRPC refuses too:

    router:
      max_stop_strings: 16          # stop strings per request...
      max_stop_chars: 256           # ...each at most this long
      max_request_id_chars: 128
      max_prompt_chars: 1000000     # a text prompt, or all chat messages' content together (characters);
                                    # bounds the tokenizer's work before the context length can be checked

Every check raises `InvalidRequestError` (INVALID_ARGUMENT on the wire, 400 over HTTP) naming the field
(prefixed `sampling.` for sampling fields) and the bound's config key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.worker.engine.types import InvalidRequestError, SamplingParams


@dataclass(frozen=True)
class RequestBounds:
    """Bounds on a request's fields; see the module docstring for the keys."""

    max_stop_strings: int = 16
    max_stop_chars: int = 256
    max_request_id_chars: int = 128
    max_prompt_chars: int = 1_000_000

    def __post_init__(self) -> None:
        bad = {k: v for k, v in vars(self).items() if not isinstance(v, int) or v < 1}
        if bad:
            raise ValueError(f"router: {', '.join(bad)} must be integers >= 1, got {bad}")


def bounds_from_section(sec) -> RequestBounds:
    """The bounds from the validated `router:` section (muxserve/settings.py `Router`)."""
    return RequestBounds(*(int(getattr(sec, k)) for k in
                           ("max_stop_strings", "max_stop_chars", "max_request_id_chars", "max_prompt_chars")))


def short(value: str, limit: int = 80) -> str:
    """repr(value), cut to about `limit` characters: client input echoed in an error message (a status
    message travels in HTTP/2 trailers, which clients cap at 8-16 KiB)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(value)} characters)"


def check_sampling(s: SamplingParams, bounds: RequestBounds = RequestBounds()) -> None:
    """Finite, in-range sampling values and bounded stop strings."""
    for name in ("temperature", "top_p"):
        if not math.isfinite(getattr(s, name)):
            raise InvalidRequestError(f"sampling.{name} must be a finite number, got {getattr(s, name)}")
    try:
        s.validate()
    except InvalidRequestError as exc:
        raise InvalidRequestError(f"sampling.{exc}") from None
    if any(not isinstance(x, str) or not x for x in s.stop):
        raise InvalidRequestError("sampling.stop must not contain empty strings")
    if len(s.stop) > bounds.max_stop_strings:
        raise InvalidRequestError(f"sampling.stop has {len(s.stop)} strings; at most {bounds.max_stop_strings} "
                                  "(router.max_stop_strings)")
    long = next((x for x in s.stop if len(x) > bounds.max_stop_chars), None)
    if long is not None:
        raise InvalidRequestError(f"sampling.stop: a string of {len(long)} characters; at most "
                                  f"{bounds.max_stop_chars} (router.max_stop_chars)")


def check_prompt_size(prompt: str | list[dict] | None, bounds: RequestBounds = RequestBounds()) -> None:
    """A text prompt, or the chat messages' content, within max_prompt_chars."""
    if isinstance(prompt, list):
        n = sum(len(str(m.get("content") or "")) + len(str(m.get("role") or "")) for m in prompt)
    else:
        n = len(prompt or "")
    if n > bounds.max_prompt_chars:
        raise InvalidRequestError(f"prompt is {n} characters long; at most {bounds.max_prompt_chars} "
                                  "(router.max_prompt_chars)")


def check_request_id(request_id: str, bounds: RequestBounds = RequestBounds()) -> None:
    if len(request_id) > bounds.max_request_id_chars:
        raise InvalidRequestError(f"request_id is {len(request_id)} characters long; at most "
                                  f"{bounds.max_request_id_chars} (router.max_request_id_chars)")


def check_request(request_id: str, prompt: str | list[dict] | None, sampling: SamplingParams,
                  bounds: RequestBounds = RequestBounds()) -> None:
    """Everything above, in the order the router checks it."""
    check_prompt_size(prompt, bounds)
    check_sampling(sampling, bounds)
    check_request_id(request_id, bounds)
