"""Request admission checks of the engine: prompt to token ids, lengths and KV capacity.

Each raises types.InvalidRequestError / CapacityError with a message that says what is wrong; the
worker's servicer maps those to INVALID_ARGUMENT / RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

from services.worker.engine.types import CapacityError, Chunk, InvalidRequestError


def prompt_ids(tokenizer, vocab_size: int, prompt: str | list[dict] | None, prompt_token_ids: list[int] | None,
               add_special_tokens: bool | None = None) -> list[int]:
    """The request's prompt as token ids, tokenized as transformers and vLLM do.

    prompt_token_ids win (used as given). A text prompt is encoded with the tokenizer's special tokens
    (BOS) unless add_special_tokens is False. A list of chat messages ({"role", "content"}) is rendered
    with the tokenizer's own chat template (with the generation prompt) and encoded without adding
    special tokens unless add_special_tokens is True (the template writes them).
    """
    if prompt_token_ids:
        ids = [int(t) for t in prompt_token_ids]
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise InvalidRequestError(f"prompt token ids {bad[:4]} outside the vocabulary [0, {vocab_size})")
        return ids
    if isinstance(prompt, list):
        prompt, specials = render_chat(tokenizer, prompt), bool(add_special_tokens)
    else:
        specials = add_special_tokens is not False
    ids = tokenizer.encode(prompt, add_special_tokens=specials) if prompt else []
    if not ids:
        raise InvalidRequestError("empty prompt: give a non-empty prompt, messages or prompt_token_ids")
    return ids


def render_chat(tokenizer, messages: list[dict]) -> str:
    """messages rendered by the tokenizer's chat template; InvalidRequestError when it has none."""
    if not messages:
        raise InvalidRequestError("messages is empty")
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidRequestError("this model's tokenizer has no chat template: use the completions API "
                                  "(a text prompt) instead")
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # noqa: BLE001 - a template that rejects the messages is bad input
        raise InvalidRequestError(f"the chat template rejected the messages: {exc}") from None


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
