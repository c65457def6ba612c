"""Why an LLM failed to load, as one line for the log, GetStatus, the placer and the model's requests.

A worker loads each LLM of its unit on its own (services/worker/server.Worker._load): one that cannot load
(unsupported architecture, missing or corrupt weights, a job process that died while starting, too big for
the pool) is recorded with `failure_reason(exc)` and the others serve. The engine's own errors
(UnsupportedModelError, EngineError) already name the architecture or the model and say why, so they pass
unchanged; anything else (an OSError, safetensors' SafetensorError, ...) is prefixed with its type.
"""

from __future__ import annotations

from services.worker.engine.types import EngineError, UnsupportedModelError

MAX_REASON_CHARS = 1000  # a reason travels in every refused request's status: keep it one readable line


def failure_reason(exc: BaseException) -> str:
    """One line naming what went wrong (at most MAX_REASON_CHARS)."""
    text = " ".join(str(exc).split()) or "no message"
    if not isinstance(exc, (UnsupportedModelError, EngineError)):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS - 3] + "..."
