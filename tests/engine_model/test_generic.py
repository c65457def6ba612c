"""The generic path (transformers' modules + the paged attention over the head-wise pool) against transformers.

Tiny random-weight fp32 checkpoints of architectures beyond the Llama family: prefill and decode logits within
1e-3 of transformers' forward, with mixed prompt lengths, a sequence joining mid-flight, a chunked prefill and
contexts over many blocks (block size 4), decode through both decode attention paths; greedy tokens equal to
transformers' generate. Gemma 2 and Gemma 3 carry soft-capping / alternating sliding windows (window 8 here, so the
contexts cross it); Mixtral, Qwen3-MoE and OLMoE route tokens through experts.
"""

from __future__ import annotations

import pytest
import torch

import services.worker.engine.attention as attention
from muxserve.tiny import write_tiny_checkpoint
from tests.engine_model.helpers import Driver, hf_last_logits, hf_model

GENERIC = ("qwen3", "phi3", "gemma", "gemma2", "gemma3_text", "cohere2", "olmo2", "starcoder2", "gpt2", "gpt_neox",
           "phi", "opt", "granite", "mixtral", "qwen3_moe", "olmoe", "smollm3", "glm4", "helium", "exaone4")


@pytest.fixture(scope="module")
def generic_ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("generic-ckpt")
    return {a: write_tiny_checkpoint(root / a, a, seed=21 + i) for i, a in enumerate(GENERIC)}


def check_logits(d: Driver, hf, plan: dict[int, int], out) -> None:
    for i, sid in enumerate(plan):
        s = d.seqs[sid]
        diff = (out.logits[i] - hf_last_logits(hf, s.tokens[: s.computed])).abs().max().item()
        assert diff < 1e-3, f"seq {sid} at {s.computed} tokens: max |diff| {diff}"


@pytest.mark.parametrize("arch", GENERIC)
def test_generic_path_matches_transformers(arch, generic_ckpts, monkeypatch):
    path = generic_ckpts[arch]
    d, hf = Driver(path, seed=1), hf_model(path)
    assert d.spec.engine == "generic"
    d.add(0, [5, 17, 99, 3, 250, 7, 8])  # 2 token blocks
    d.add(1, list(range(40, 53)))  # 4 token blocks, past the window of 8
    d.add(2, [300, 301, 2, 77, 78, 79, 80, 81, 82, 83, 84])  # joins later, prefilled in 2 chunks
    plans = [{0: 7, 1: 13}, {0: 1, 1: 1, 2: 6}, {2: 5, 0: 1, 1: 1}] + [{0: 1, 1: 1, 2: 1}] * 4
    for k, plan in enumerate(plans):  # decode steps alternate between the bags and the gathered decode
        monkeypatch.setattr(attention, "GATHER_MAX_ROWS", 10**9 if k % 2 else 0)
        check_logits(d, hf, plan, d.step(plan))
    assert d.seqs[1].computed > 16
    check_greedy(d, hf)


def check_greedy(d: Driver, hf, new: int = 10) -> None:
    """Fresh sequences in the same pool, then greedy decoding: the tokens of transformers' generate."""
    prompts = {10: [1, 50, 60, 70], 11: list(range(100, 119)), 12: [9]}
    for sid, p in prompts.items():
        d.add(sid, p)
    d.step({sid: len(p) for sid, p in prompts.items()}, return_logits=False)
    for _ in range(new - 1):
        d.step({sid: 1 for sid in prompts}, return_logits=False)
    for sid, p in prompts.items():
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p]), max_new_tokens=new, do_sample=False, eos_token_id=None,
                              pad_token_id=0)[0, len(p):].tolist()
        assert d.seqs[sid].tokens[len(p):] == ref, f"seq {sid}"
