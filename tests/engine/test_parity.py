"""Greedy tokens of UnitEngine == transformers generate(do_sample=False), token for token."""

from __future__ import annotations

import pytest

from services.worker.engine.config import EngineConfig, LLMConfig
from services.worker.engine.engine import UnitEngine
from services.worker.engine.types import SamplingParams

from .conftest import hf_greedy, prompts

GREEDY = SamplingParams(max_tokens=12, ignore_eos=True)


def run_all(eng: UnitEngine, check_integrity: bool = True) -> dict:
    """Step until idle; output token ids and finish reasons per request id."""
    toks, reasons, steps = {}, {}, 0
    while eng.has_unfinished():
        for rid, ch in eng.step().items():
            toks.setdefault(rid, []).extend(ch.token_ids)
            if ch.finish_reason:
                reasons[rid] = ch.finish_reason
        if check_integrity:
            eng.check_integrity()
        steps += 1
        assert steps < 2000, "the engine does not make progress"
    return {"tokens": toks, "reasons": reasons, "steps": steps}


@pytest.mark.parametrize("arch", ["ck_llama", "ck_mistral", "ck_qwen2"])
def test_mixed_batch_joining_midflight(arch, request):
    path = request.getfixturevalue(arch)
    eng = UnitEngine([LLMConfig("m", str(path))], EngineConfig(block_size=4, num_blocks=3000, max_prefill_tokens=48))
    ps = prompts(eng.llms["m"].spec.vocab_size, 8, lo=2, hi=40, seed=1)
    for i, p in enumerate(ps[:4]):
        eng.add_request(f"r{i}", "m", prompt_token_ids=p, sampling=GREEDY)
    early = {}
    for _ in range(4):  # the first four are mid-decode when the rest arrive
        for rid, ch in eng.step().items():
            early.setdefault(rid, []).extend(ch.token_ids)
    assert any(early.values()), "some tokens before the late arrivals"
    for i, p in enumerate(ps[4:], start=4):
        eng.add_request(f"r{i}", "m", prompt_token_ids=p, sampling=GREEDY)
    out = run_all(eng)
    for i, p in enumerate(ps):
        got = early.get(f"r{i}", []) + out["tokens"][f"r{i}"]
        assert got == hf_greedy(path, p, GREEDY.max_tokens, ignore_eos=True), f"request r{i} ({len(p)} tokens)"
        assert out["reasons"][f"r{i}"] == "length"
    assert eng.stats()["pool"]["free"] == 3000
    eng.close()


def test_two_llms_of_different_shapes_share_one_pool(ck_llama, ck_mistral):
    eng = UnitEngine([LLMConfig("a", str(ck_llama), rate=1.0), LLMConfig("b", str(ck_mistral), rate=3.0)],
                     EngineConfig(block_size=4, num_blocks=4000))
    q = eng.quotas  # rate x blocks-per-token: 1 x (2 layers x 2 heads) vs 3 x (3 x 3)
    assert q["b"] / q["a"] == pytest.approx(27 / 4, rel=0.01) and sum(q.values()) <= 4000
    pa = prompts(eng.llms["a"].spec.vocab_size, 4, seed=2)
    pb = prompts(eng.llms["b"].spec.vocab_size, 4, seed=3)
    for i in range(4):
        eng.add_request(f"a{i}", "a", prompt_token_ids=pa[i], sampling=GREEDY)
        eng.add_request(f"b{i}", "b", prompt_token_ids=pb[i], sampling=GREEDY)
    first = eng.step()
    st = eng.stats()
    used = st["llms"]["a"]["used_blocks"] + st["llms"]["b"]["used_blocks"]
    assert st["llms"]["a"]["used_blocks"] > 0 and st["llms"]["b"]["used_blocks"] > 0
    assert st["pool"]["free"] == 4000 - used  # both draw from the one pool
    out = run_all(eng)
    got = {rid: (first[rid].token_ids if rid in first else []) + out["tokens"][rid] for rid in out["tokens"]}
    for i in range(4):
        assert got[f"a{i}"] == hf_greedy(ck_llama, pa[i], 12, ignore_eos=True)
        assert got[f"b{i}"] == hf_greedy(ck_mistral, pb[i], 12, ignore_eos=True)
    eng.close()


def test_preemption_in_a_tiny_pool_keeps_exact_output(ck_llama, ck_mistral):
    # 2 LLMs, 6 requests each of up to 40 + 24 tokens; the pool holds a fraction of that at once.
    sp = SamplingParams(max_tokens=24, ignore_eos=True)
    eng = UnitEngine([LLMConfig("a", str(ck_llama)), LLMConfig("b", str(ck_mistral))],
                     EngineConfig(block_size=4, num_blocks=300, max_prefill_tokens=64))
    ps = {n: prompts(eng.llms[n].spec.vocab_size, 6, lo=10, hi=40, seed=4) for n in "ab"}
    for n in "ab":
        for i, p in enumerate(ps[n]):
            eng.add_request(f"{n}{i}", n, prompt_token_ids=p, sampling=sp)
    out = run_all(eng)
    assert eng.stats()["preemptions"] > 0, "the pool was meant to be too small for all at once"
    for n, path in (("a", ck_llama), ("b", ck_mistral)):
        for i, p in enumerate(ps[n]):
            assert out["tokens"][f"{n}{i}"] == hf_greedy(path, p, 24, ignore_eos=True), f"{n}{i}"
    assert eng.stats()["pool"]["free"] == 300
    eng.close()


def test_eos_stops_unless_ignore_eos(ck_llama):
    eng = UnitEngine([LLMConfig("m", str(ck_llama))], EngineConfig(block_size=4, num_blocks=2000))
    eos = eng.llms["m"].spec.eos_token_ids[0]
    cands = prompts(eng.llms["m"].spec.vocab_size, 40, seed=5)
    hit = next((p for p in cands if eos in hf_greedy(ck_llama, p, 16, ignore_eos=True)[:-1]), None)
    assert hit is not None, "no prompt among 40 makes this model emit EOS early"
    ref_stop = hf_greedy(ck_llama, hit, 16)  # transformers stops at EOS (and keeps it)
    (ids, _), = eng.generate("m", [hit], SamplingParams(max_tokens=16))
    assert ids == ref_stop and ids[-1] == eos and len(ids) < 16
    eng.add_request("x", "m", prompt_token_ids=hit, sampling=SamplingParams(max_tokens=16, ignore_eos=True))
    out = run_all(eng)
    assert out["tokens"]["x"] == hf_greedy(ck_llama, hit, 16, ignore_eos=True)
    assert out["reasons"]["x"] == "length" and len(out["tokens"]["x"]) == 16
    eng.close()


def test_text_prompt_and_chunked_long_prompt(ck_qwen2):
    eng = UnitEngine([LLMConfig("m", str(ck_qwen2))], EngineConfig(block_size=2, num_blocks=6000, max_prefill_tokens=7))
    tok = eng.llms["m"].tokenizer
    text = "MuxServe serves many large language models at once on shared devices. " * 3
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) > 7 * 3, "the prompt must span several prefill chunks"
    (got, out_text), = eng.generate("m", [text], GREEDY)
    assert got == hf_greedy(ck_qwen2, ids, 12, ignore_eos=True)
    assert out_text == tok.decode(got, skip_special_tokens=True)
    eng.close()
