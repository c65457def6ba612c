"""Engine test fixtures: tiny checkpoints of three families (head_dim 16 everywhere, so they can
share one pool) and transformers' own greedy generate as the reference."""

from __future__ import annotations

import pytest
import torch

from muxserve.tiny import write_tiny_checkpoint


@pytest.fixture(scope="session")
def ck_llama(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("eng-llama"), "llama", seed=11)


@pytest.fixture(scope="session")
def ck_mistral(tmp_path_factory):  # another shape: 3 layers, 6 heads, 3 KV heads, head_dim 16
    return write_tiny_checkpoint(tmp_path_factory.mktemp("eng-mistral"), "mistral", hidden_size=96,
                                 num_layers=3, num_heads=6, num_kv_heads=3, seed=12)


@pytest.fixture(scope="session")
def ck_qwen2(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("eng-qwen2"), "qwen2", seed=13)


_HF: dict = {}


def hf_model(path):
    from transformers import AutoModelForCausalLM

    key = str(path)
    if key not in _HF:
        _HF[key] = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return _HF[key]


def hf_greedy(path, prompt_ids: list[int], max_new_tokens: int, ignore_eos: bool = False) -> list[int]:
    """transformers' generate(do_sample=False) for one unpadded prompt; the new token ids."""
    model = hf_model(path)
    kwargs = {"eos_token_id": None} if ignore_eos else {}
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=model.config.eos_token_id, **kwargs)
    return out[0, len(prompt_ids):].tolist()


def prompts(vocab: int, n: int, lo: int = 3, hi: int = 40, seed: int = 0) -> list[list[int]]:
    """n random token-id prompts of mixed lengths in [lo, hi] (no special tokens)."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [torch.randint(3, vocab, (k,), generator=g).tolist() for k in lens]
