"""The unit's event-driven loop with real models and jobs: a small LLM keeps decoding while a big
LLM's long prefill runs; temporal units never overlap two dispatches; process jobs run on the cores
the placement gives them (read back from the job processes); the final chunk carries the timing."""

from __future__ import annotations

import os
import time

import pytest

from muxserve.tiny import write_tiny_checkpoint
from services.worker.engine.config import EngineConfig, LLMConfig
from services.worker.engine.engine import UnitEngine
from services.worker.engine.types import SamplingParams

from .conftest import hf_greedy, prompts

BIG = dict(hidden_size=256, num_layers=6, num_heads=16, num_kv_heads=4, intermediate_size=768,
           max_position_embeddings=4096)  # head_dim 16, as the small ones


@pytest.fixture(scope="module")
def ck_big(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("loop-big"), "llama", seed=5, **BIG)


def run_until_done(eng: UnitEngine, rids: set[str]) -> list[tuple[float, str, object]]:
    """Step until every rid finished; the (time, rid, chunk) events in the order they came."""
    events, pending = [], set(rids)
    while pending:
        for rid, ch in eng.step().items():
            events.append((time.monotonic(), rid, ch))
            if ch.finish_reason:
                pending.discard(rid)
    return events


def test_small_llm_decodes_while_a_big_llm_prefills(ck_llama, ck_big):
    eng = UnitEngine([LLMConfig("small", str(ck_llama)), LLMConfig("big", str(ck_big))],
                     EngineConfig(block_size=16, num_blocks=8000))
    try:
        vocab = eng.llms["small"].spec.vocab_size
        small_prompt = prompts(vocab, 1, seed=3)[0]
        eng.add_request("s", "small", prompt_token_ids=small_prompt,
                        sampling=SamplingParams(max_tokens=60, ignore_eos=True))
        events = []
        while not any(rid == "s" and ch.token_ids for _, rid, ch in events):
            events += [(time.monotonic(), r, c) for r, c in eng.step().items()]
        eng.add_request("b", "big", prompt_token_ids=prompts(vocab, 1, lo=3000, hi=3000, seed=4)[0],
                        sampling=SamplingParams(max_tokens=2, ignore_eos=True))
        events += run_until_done(eng, {"s", "b"})
        b_first = next(i for i, (_, rid, ch) in enumerate(events) if rid == "b" and ch.token_ids)
        small_during = [ch for _, rid, ch in events[:b_first] if rid == "s" and ch.token_ids]
        assert len(small_during) >= 3, "the small LLM's decode advanced several steps during the long prefill"
        toks = [t for _, rid, ch in events if rid == "s" for t in ch.token_ids]
        assert toks == hf_greedy(ck_llama, small_prompt, 60, ignore_eos=True), "parity through the new loop"
        eng.check_integrity()
    finally:
        eng.close()


def test_temporal_unit_never_overlaps_dispatches(ck_llama, ck_qwen2):
    eng = UnitEngine([LLMConfig("a", str(ck_llama)), LLMConfig("b", str(ck_qwen2))],
                     EngineConfig(block_size=4, num_blocks=2000, mode="temporal"))
    overlaps, submitted = [], []
    for name, hosted in eng.llms.items():
        for kind in ("prefill", "decode"):
            job = getattr(hosted, kind)
            orig = job.submit

            def submit(step, _orig=orig, _key=(name, kind)):
                overlaps.append(len(eng._inflight))  # what else is in flight as this one starts
                submitted.append(_key)
                return _orig(step)
            job.submit = submit
    try:
        ps = prompts(eng.llms["a"].spec.vocab_size, 4, seed=8)
        for i, p in enumerate(ps):
            eng.add_request(f"r{i}", "ab"[i % 2], prompt_token_ids=p,
                            sampling=SamplingParams(max_tokens=5, ignore_eos=True))
        events = run_until_done(eng, {f"r{i}" for i in range(4)})
        assert overlaps and max(overlaps) == 0, "a temporal unit runs one dispatch at a time"
        assert submitted[0] == ("a", "prefill"), "FCFS: r0 (model a) arrived first"
        got = {}
        for _, rid, ch in events:
            got.setdefault(rid, []).extend(ch.token_ids)
        for i, p in enumerate(ps):
            ck = ck_llama if i % 2 == 0 else ck_qwen2
            assert got[f"r{i}"] == hf_greedy(ck, p, 5, ignore_eos=True)
    finally:
        eng.close()


def test_final_chunk_carries_timing(ck_llama):
    eng = UnitEngine([LLMConfig("m", str(ck_llama))], EngineConfig(block_size=4, num_blocks=500))
    try:
        eng.add_request("r", "m", prompt_token_ids=[5, 6, 7, 8], sampling=SamplingParams(max_tokens=6, ignore_eos=True))
        t0 = time.monotonic()
        events = run_until_done(eng, {"r"})
        wall = time.monotonic() - t0
        last = events[-1][2]
        assert last.finish_reason == "length" and last.timing is not None
        t = last.timing
        assert 0 <= t.queue_s <= t.ttft_s <= t.e2e_s <= wall + 0.5
        assert t.tpot_s == pytest.approx((t.e2e_s - t.ttft_s) / 5, rel=1e-6)
        assert all(ch.timing is None for _, _, ch in events[:-1]), "only the final chunk carries it"
    finally:
        eng.close()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_placement_shares_reach_the_job_processes(ck_llama, ck_qwen2):
    cores = sorted(os.sched_getaffinity(0))[:2]
    shares = {"a/prefill": 0.5, "a/decode": 0.5, "b/prefill": 0.5, "b/decode": 0.5}
    eng = UnitEngine([LLMConfig("a", str(ck_llama)), LLMConfig("b", str(ck_qwen2))],
                     EngineConfig(block_size=4, num_blocks=2000, job_mode="process", cores=cores,
                                  compute_shares=shares, spread_cores=False))  # exact shares: no spreading
    try:
        def affinity():
            out = {}
            for name, h in eng.llms.items():
                for kind in ("prefill", "decode"):
                    job = getattr(h, kind)
                    assert job.wait_ready(60)
                    out[f"{name}/{kind}"] = sorted(os.sched_getaffinity(job.pid))
            return out

        got = affinity()
        assert got == {"a/prefill": [cores[0]], "a/decode": [cores[1]], "b/prefill": [cores[0]],
                       "b/decode": [cores[1]]}, "the unit's cores divided among all its jobs by share"
        # a new placement: a's decode gets the whole unit, b's jobs half; effective at the next dispatch
        eng.set_placement({"a/prefill": 0.5, "a/decode": 1.0, "b/prefill": 0.5, "b/decode": 0.5})
        ps = prompts(eng.llms["a"].spec.vocab_size, 2, seed=9)
        eng.add_request("x", "a", prompt_token_ids=ps[0], sampling=SamplingParams(max_tokens=4, ignore_eos=True))
        eng.add_request("y", "b", prompt_token_ids=ps[1], sampling=SamplingParams(max_tokens=4, ignore_eos=True))
        events = run_until_done(eng, {"x", "y"})
        assert all(ch.finish_reason == "length" for _, _, ch in events if ch.finish_reason), "nothing failed"
        got = affinity()
        assert got["a/decode"] == cores and got["a/prefill"] == [cores[0]]
    finally:
        eng.close()


def test_spatial_unit_pins_its_jobs_to_its_cores(ck_llama):
    core = sorted(os.sched_getaffinity(0))[-1]
    eng = UnitEngine([LLMConfig("a", str(ck_llama))],
                     EngineConfig(block_size=4, num_blocks=500, job_mode="process", cores=[core]))
    try:
        for job in (eng.llms["a"].prefill, eng.llms["a"].decode):
            assert job.wait_ready(60)
            assert os.sched_getaffinity(job.pid) == {core}
    finally:
        eng.close()
