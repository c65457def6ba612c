"""UnitEngine request handling: validation, abort, stop strings, max_tokens, seeded sampling."""

from __future__ import annotations

import pytest

from services.worker.engine.config import EngineConfig, EngineConfigError, LLMConfig
from services.worker.engine.engine import UnitEngine
from services.worker.engine.types import (
    CapacityError, InvalidRequestError, SamplingParams, UnknownModelError,
)

from .conftest import prompts
from .test_parity import run_all


@pytest.fixture(scope="module")
def eng(ck_llama):
    e = UnitEngine([LLMConfig("m", str(ck_llama))], EngineConfig(block_size=4, num_blocks=2000))
    yield e
    e.close()


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(llm="nope", prompt="hi"), UnknownModelError, "nope"),
    (dict(prompt=""), InvalidRequestError, "empty prompt"),
    (dict(prompt_token_ids=[1, 99999]), InvalidRequestError, "vocabulary"),
    (dict(prompt_token_ids=[5] * 1025), InvalidRequestError, "max_model_len"),
    (dict(prompt_token_ids=[5] * 1000, sampling=SamplingParams(max_tokens=100)), InvalidRequestError, "max_tokens"),
    (dict(prompt="hi", sampling=SamplingParams(max_tokens=0)), InvalidRequestError, "max_tokens"),
    (dict(prompt="hi", sampling=SamplingParams(top_p=0)), InvalidRequestError, "top_p"),
    (dict(prompt="hi", sampling=SamplingParams(temperature=-1)), InvalidRequestError, "temperature"),
])
def test_bad_requests_are_refused_with_a_named_reason(eng, kwargs, error, words):
    args = dict(llm="m", prompt=None, prompt_token_ids=None, sampling=None) | kwargs
    with pytest.raises(error, match=words):
        eng.add_request("bad", **args)
    assert not eng.has_unfinished()
    (ids, _), = eng.generate("m", ["still serving"], SamplingParams(max_tokens=2))  # and keeps serving
    assert len(ids) >= 1


def test_duplicate_request_id_and_too_big_for_the_pool(ck_llama):
    e = UnitEngine([LLMConfig("m", str(ck_llama))], EngineConfig(block_size=4, num_blocks=40))
    with pytest.raises(CapacityError, match="pool"):  # 2 layers x 2 heads x 11 token blocks > 40
        e.add_request("big", "m", prompt_token_ids=[5] * 30, sampling=SamplingParams(max_tokens=12))
    e.add_request("x", "m", prompt="hello")
    with pytest.raises(InvalidRequestError, match="already in use"):
        e.add_request("x", "m", prompt="hello")
    e.close()


def test_engine_config_is_validated():
    with pytest.raises(EngineConfigError, match="block_size"):
        EngineConfig(block_size=0)
    with pytest.raises(EngineConfigError, match="job_mode"):
        EngineConfig.from_section({"job_mode": "fork"})
    assert EngineConfig.from_section({"num_blocks": 7}).num_blocks == 7
    with pytest.raises(EngineConfigError, match=r"unknown key `engine.unrelated`"):
        EngineConfig.from_section({"num_blocks": 7, "unrelated": 1})
    assert EngineConfig(pool_bytes=2 * 16 * 64 * 4 * 10, block_size=16).pool_blocks(head_dim=64) == 10


def test_abort_frees_blocks(eng):
    ps = prompts(eng.llms["m"].spec.vocab_size, 5, seed=7)
    for i, p in enumerate(ps):
        eng.add_request(f"ab{i}", "m", prompt_token_ids=p, sampling=SamplingParams(max_tokens=50, ignore_eos=True))
    eng.step()
    eng.step()
    assert eng.stats()["pool"]["free"] < 2000
    for i in range(5):
        eng.abort(f"ab{i}")
    out = run_all(eng)
    assert all(out["reasons"][f"ab{i}"] == "abort" for i in range(5))
    assert eng.stats()["pool"]["free"] == 2000 and not eng.has_unfinished()
    eng.check_integrity()


def test_max_tokens_ends_with_length(eng):
    eng.add_request("len", "m", prompt="The quick", sampling=SamplingParams(max_tokens=5, ignore_eos=True))
    out = run_all(eng)
    assert len(out["tokens"]["len"]) == 5 and out["reasons"]["len"] == "length"


def test_stop_string_ends_the_stream_without_the_stop_text(eng):
    tok = eng.llms["m"].tokenizer
    sp = SamplingParams(max_tokens=40, ignore_eos=True)
    (ids, full), = eng.generate("m", ["Hello, world!"], sp)
    assert full == tok.decode(ids, skip_special_tokens=True)
    clean = [i for i in range(4, len(full) - 3) if "\ufffd" not in full[i:i + 3] and full.find(full[i:i + 3]) == i]
    assert clean, f"no usable stop string in {full!r}"
    stop = full[clean[0]:clean[0] + 3]
    eng.add_request("s", "m", prompt="Hello, world!", sampling=SamplingParams(max_tokens=40, ignore_eos=True,
                                                                             stop=(stop,)))
    text, reason = "", None
    while eng.has_unfinished():
        for rid, ch in eng.step().items():
            text += ch.text
            reason = ch.finish_reason or reason
    assert reason == "stop" and text == full[:clean[0]]


def test_seeded_sampling_is_reproducible(eng):
    ps = prompts(eng.llms["m"].spec.vocab_size, 3, seed=8)
    a = eng.generate("m", ps, SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=123, ignore_eos=True))
    b = eng.generate("m", ps, SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=123, ignore_eos=True))
    c = eng.generate("m", ps, SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=124, ignore_eos=True))
    greedy = eng.generate("m", ps, SamplingParams(max_tokens=16, ignore_eos=True))
    assert a == b
    assert a != c and a != greedy, "a seed must change the draw"


def test_seeded_sampling_survives_preemption(ck_llama):
    sp = SamplingParams(max_tokens=20, temperature=0.8, seed=5, ignore_eos=True)
    big = UnitEngine([LLMConfig("m", str(ck_llama))], EngineConfig(block_size=4, num_blocks=4000))
    ps = prompts(big.llms["m"].spec.vocab_size, 6, lo=10, hi=30, seed=9)
    ref = big.generate("m", ps, sp)
    big.close()
    small = UnitEngine([LLMConfig("m", str(ck_llama))], EngineConfig(block_size=4, num_blocks=100))
    assert small.generate("m", ps, sp) == ref
    assert small.stats()["preemptions"] > 0
    small.close()


def test_add_and_remove_llm(eng, ck_qwen2):
    eng.add_llm(LLMConfig("q", str(ck_qwen2), rate=2.0))
    assert set(eng.quotas) == {"m", "q"}
    eng.add_request("q1", "q", prompt="Hello", sampling=SamplingParams(max_tokens=30, ignore_eos=True))
    eng.step()
    eng.remove_llm("q", drain=True)  # drains: q1 runs to its end first
    assert "q" not in eng.llms and eng.stats()["pool"]["free"] == 2000
    out = eng.step()
    assert out["q1"].finish_reason == "length" and out["q1"].completion_tokens == 30
    with pytest.raises(UnknownModelError):
        eng.add_request("q2", "q", prompt="Hello")
