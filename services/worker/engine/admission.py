"""Request admission checks of the engine: prompt to token ids, lengths and KV capacity.

Each raises types.InvalidRequestError / CapacityError with a message that says what is wrong; the
worker's servicer maps those to INVALID_ARGUMENT / RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

from services.worker.engine.types import CapacityError, Chunk, InvalidRequestError


def prompt_ids(tokenizer, vocab_size: int, prompt: str | None, prompt_token_ids: list[int] | None) -> list[int]:
    """The request's prompt as token ids (prompt_token_ids win; a text prompt is encoded without specials)."""
    if prompt_token_ids:
        ids = [int(t) for t in prompt_token_ids]
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise InvalidRequestError(f"prompt token ids {bad[:4]} outside the vocabulary [0, {vocab_size})")
        return ids
    ids = tokenizer.encode(prompt, add_special_tokens=False) if prompt else []
    if not ids:
        raise InvalidRequestError("empty prompt: give a non-empty prompt or prompt_token_ids")
    return ids


def check_lengths(n_prompt: int, max_tokens: int, max_model_len: int, blocks_needed: int, capacity: int) -> None:
    """Prompt and prompt + max_tokens within max_model_len; the whole sequence's KV blocks within the pool."""
    if n_prompt > max_model_len:
        raise InvalidRequestError(f"prompt has {n_prompt} tokens, more than max_model_len {max_model_len}")
    if n_prompt + max_tokens > max_model_len:
        raise InvalidRequestError(
            f"prompt ({n_prompt} tokens) + max_tokens ({max_tokens}) exceeds max_model_len {max_model_len}")
    if blocks_needed > capacity:
        raise CapacityError(f"the request needs {blocks_needed} KV blocks; the unit's pool has {capacity}")


def merge_chunks(a: Chunk | None, b: Chunk | None) -> Chunk:
    """a then b of one request as one chunk."""
    if a is None or b is None:
        return a or b
    return Chunk(a.token_ids + b.token_ids, a.text + b.text, b.finish_reason or a.finish_reason,
                 b.prompt_tokens, b.completion_tokens, b.error or a.error, b.timing or a.timing)
