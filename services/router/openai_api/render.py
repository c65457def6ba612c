"""OpenAI response bodies: completions and chat completions, whole or as SSE chunks.

Usage: prompt_tokens counts each prompt once (not once per choice), completion_tokens every choice's
tokens. In a stream, with stream_options.include_usage, a last chunk with no choices carries usage.
"""

from __future__ import annotations

import json

from services.router.openai_api.runs import Choice, Piece


def usage(choices: list[Choice], n: int) -> dict:
    prompt = sum(c.prompt_tokens for i, c in enumerate(choices) if i % n == 0)
    completion = sum(c.completion_tokens for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion(rid: str, created: int, model: str, choices: list[Choice], n: int) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                        for i, c in enumerate(choices)],
            "usage": usage(choices, n)}


def chat(rid: str, created: int, model: str, choices: list[Choice], n: int) -> dict:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": c.text},
                         "logprobs": None, "finish_reason": c.finish_reason}
                        for i, c in enumerate(choices)],
            "usage": usage(choices, n)}


def completion_chunk(rid: str, created: int, model: str, i: int, p: Piece) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": i, "text": p.text, "logprobs": None, "finish_reason": p.finish_reason or None}]}


def chat_chunk(rid: str, created: int, model: str, i: int, delta: dict, finish_reason: str = "") -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish_reason or None}]}


def usage_chunk(rid: str, created: int, model: str, obj: str, choices: list[Choice], n: int) -> dict:
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
            "usage": usage(choices, n)}


def sse(body: dict | str) -> bytes:
    data = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


DONE = sse("[DONE]")
