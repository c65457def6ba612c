"""The generic path inside the unit engine: continuous batching, separate prefill and decode jobs, and LLMs of
different architectures sharing one head-wise pool, each token for token equal to transformers' generate."""

from __future__ import annotations

import pytest

from muxserve.tiny import write_tiny_checkpoint
from services.worker.engine.config import EngineConfig, LLMConfig
from services.worker.engine.engine import UnitEngine
from services.worker.engine.types import SamplingParams

from .conftest import hf_greedy, prompts
from .test_parity import run_all

SP = SamplingParams(max_tokens=10, ignore_eos=True)


@pytest.fixture(scope="module")
def ck_gemma2(tmp_path_factory):  # soft-capping, alternating sliding window 8, head_dim 16
    return write_tiny_checkpoint(tmp_path_factory.mktemp("eng-gemma2"), "gemma2", seed=31)


@pytest.fixture(scope="module")
def ck_qwen3(tmp_path_factory):  # another shape: 3 layers, 6 heads, 3 KV heads, head_dim 16
    return write_tiny_checkpoint(tmp_path_factory.mktemp("eng-qwen3"), "qwen3", hidden_size=96, num_layers=3,
                                 num_heads=6, num_kv_heads=3, seed=32)


def _owners(eng: UnitEngine) -> dict[int, str]:
    """pool block id -> the LLM whose running sequence holds it."""
    return {b: s.llm for s in eng._seqs.values() for b in s.block_table}


def test_two_architectures_share_one_pool(ck_gemma2, ck_qwen3, ck_llama):
    """Gemma 2 (generic), Qwen3 (generic) and Llama (fast path) in one unit, requests joining mid-flight: their
    blocks interleave in the one pool and every request matches transformers."""
    paths = {"g": ck_gemma2, "q": ck_qwen3, "l": ck_llama}
    eng = UnitEngine([LLMConfig(n, str(p)) for n, p in paths.items()],
                     EngineConfig(block_size=4, num_blocks=3000, max_prefill_tokens=40))
    assert {n: h.spec.engine for n, h in eng.llms.items()} == {"g": "generic", "q": "generic", "l": "fast"}
    ps = {n: prompts(eng.llms[n].spec.vocab_size, 4, lo=3, hi=30, seed=40 + i) for i, n in enumerate(paths)}
    got: dict[str, list[int]] = {}
    for n in paths:
        for i, p in enumerate(ps[n][:2]):
            eng.add_request(f"{n}{i}", n, prompt_token_ids=p, sampling=SP)
    owners: dict[int, str] = {}
    for _ in range(3):  # the first requests decode while the rest arrive
        for rid, ch in eng.step().items():
            got.setdefault(rid, []).extend(ch.token_ids)
        owners.update(_owners(eng))
    for n in paths:
        for i, p in enumerate(ps[n][2:], start=2):
            eng.add_request(f"{n}{i}", n, prompt_token_ids=p, sampling=SP)
    for rid, ch in eng.step().items():
        got.setdefault(rid, []).extend(ch.token_ids)
    owners.update(_owners(eng))
    out = run_all(eng)
    order = [owners[b] for b in sorted(owners)]  # the owner of each block held at some point, by block id
    runs = 1 + sum(a != b for a, b in zip(order, order[1:]))
    assert set(order) == set(paths) and runs > len(paths), f"the LLMs' blocks do not interleave: {runs} runs"
    for n, path in paths.items():
        for i, p in enumerate(ps[n]):
            rid = f"{n}{i}"
            assert got.get(rid, []) + out["tokens"].get(rid, []) == hf_greedy(path, p, 10, ignore_eos=True), rid
    assert eng.stats()["pool"]["free"] == 3000
    eng.close()


def test_generic_jobs_in_separate_processes(ck_gemma2):
    """Prefill and decode jobs of a generic-path LLM as two processes over the shared weights and pool."""
    eng = UnitEngine([LLMConfig("g", str(ck_gemma2))],
                     EngineConfig(block_size=4, num_blocks=2000, max_prefill_tokens=32, job_mode="process"))
    ps = prompts(eng.llms["g"].spec.vocab_size, 5, lo=3, hi=30, seed=50)
    outs = eng.generate("g", ps, SP)
    for p, (ids, _) in zip(ps, outs):
        assert ids == hf_greedy(ck_gemma2, p, 10, ignore_eos=True)
    assert eng.llms["g"].prefill.pid != eng.llms["g"].decode.pid
    eng.close()
