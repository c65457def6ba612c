"""Incremental detokenization: multi-byte characters across tokens, stop strings, hold-back."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from muxserve.tiny import build_tokenizer
from services.worker.engine.detok import IncrementalDetokenizer

TOK = build_tokenizer()


def stream(ids: list[int], stop=()) -> tuple[list[str], IncrementalDetokenizer]:
    d = IncrementalDetokenizer(TOK, stop)
    pieces = [d.update(ids[:i + 1]) for i in range(len(ids))]
    pieces.append(d.flush(ids))
    return pieces, d


def test_multibyte_characters_split_across_tokens():
    text = "日本語 € ¿Qué tal? 日本語€€"
    ids = TOK.encode(text, add_special_tokens=False)
    singles = [TOK.decode([i]) for i in ids]
    assert any("\ufffd" in s for s in singles), "some character must span several tokens for this test"
    pieces, _ = stream(ids)
    assert "".join(pieces) == TOK.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces), "no piece may carry half a character"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(3, len(TOK) - 1), min_size=1, max_size=30))
def test_stream_equals_decode_for_any_tokens(ids):
    pieces, _ = stream(ids)
    assert "".join(pieces) == TOK.decode(ids, skip_special_tokens=True)


def test_special_tokens_are_not_text():
    ids = TOK.encode("Hello", add_special_tokens=False) + [TOK.eos_token_id]
    pieces, _ = stream(ids)
    assert "".join(pieces) == "Hello"


def test_stop_string_is_cut_and_never_streamed():
    ids = TOK.encode("Hello, world! MuxServe serves", add_special_tokens=False)
    d = IncrementalDetokenizer(TOK, ("world!",))
    out = ""
    for i in range(len(ids)):
        out += d.update(ids[:i + 1])
        assert "world" not in out, "no part of the stop string may leave before the match is known"
        if d.stopped:
            break
    assert d.stopped and out == "Hello, "


def test_earliest_of_several_stop_strings_wins():
    ids = TOK.encode("The quick brown fox jumps", add_special_tokens=False)
    pieces, d = stream(ids, stop=("fox", "quick"))
    assert d.stopped and "".join(pieces) == "The "


def test_no_stop_holds_back_then_flushes():
    ids = TOK.encode("The quick brown", add_special_tokens=False)
    pieces, d = stream(ids, stop=("zebra",))
    assert not d.stopped and "".join(pieces) == "The quick brown"
    assert pieces[-1] != "", "the held-back tail comes out on flush"
