"""The runner's logits and greedy tokens against transformers on the same weights.

Default: fp32 on the CPU (exact greedy tokens, logits within 1e-3). `--device cuda --dtype bfloat16`
(or float16) runs the same tests against transformers in that dtype on that device: logits within
helpers.TOLERANCE, and greedy tokens equal up to the first near-tie (see `check_greedy`)."""

from __future__ import annotations

import pytest
import torch

import services.worker.engine.attention as attention
import services.worker.engine.model as model
from services.worker.engine.fused import FusedLayers
from tests.engine_model.helpers import ARCHS, TOLERANCE, Driver, hf_last_logits, hf_model


def check_logits(driver: Driver, hf, plan: dict[int, int], out) -> None:
    tol = TOLERANCE[driver.spec.dtype]
    for i, sid in enumerate(plan):
        s = driver.seqs[sid]
        ref = hf_last_logits(hf, s.tokens[: s.computed])
        diff = (out.logits[i] - ref).abs().max().item()
        assert diff < tol, f"seq {sid} at {s.computed} tokens: max |diff| {diff} (tolerance {tol})"


def check_greedy(hf, prompt: list[int], ours: list[int], ref: list[int], dtype: torch.dtype) -> None:
    """fp32: ours == ref. bf16 / fp16: equal up to the first difference, and there transformers' own
    logits rank our token within the dtype's tolerance of its pick (a near-tie that rounding decides)."""
    if dtype == torch.float32:
        assert ours == ref
        return
    i = next((i for i, (a, b) in enumerate(zip(ours, ref)) if a != b), None)
    if i is None:
        assert len(ours) == len(ref)
        return
    logits = hf_last_logits(hf, prompt + ref[:i])
    gap = (logits[ref[i]] - logits[ours[i]]).item()
    assert gap < TOLERANCE[dtype], f"token {i}: ours {ours[i]} vs {ref[i]}, a logit gap of {gap} is no near-tie"


@pytest.mark.parametrize("decode", ["fused", "gathered", "bags"])
@pytest.mark.parametrize("arch", ARCHS)
def test_mixed_flat_batches_match_transformers(arch, decode, checkpoints, hf_models, device, dtype, monkeypatch):
    """Prefill of mixed lengths, decode, a sequence joining mid-flight, a chunked prefill; decode-only
    steps through the fused native layers (fused.py), or on the torch path through each of its two decode
    attention paths (attention.GATHER_MAX_ROWS picks one per group)."""
    monkeypatch.setattr(attention, "GATHER_MAX_ROWS", 10**9 if decode == "gathered" else 0)
    monkeypatch.setattr(model, "FUSED", decode == "fused")
    d, hf = Driver(checkpoints[arch], seed=1, device=device, dtype=dtype), hf_models[arch]
    fused_calls = []
    if decode == "fused":
        if d.runner.model.fused is None:
            pytest.skip("fused decode steps need the native kernels, CPU fp32 (fused.py)")
        real = FusedLayers.__call__
        monkeypatch.setattr(FusedLayers, "__call__", lambda self, *a: fused_calls.append(a[0].shape[0]) or real(self, *a))
    d.add(0, [5, 17, 99, 3, 250, 7, 8])  # 7 tokens: 2 token blocks
    d.add(1, list(range(40, 53)))  # 13 tokens: 4 token blocks
    d.add(2, [300, 301, 2, 77, 78, 79, 80, 81, 82, 83, 84])  # joins later, prefilled in 2 chunks
    plans = [{0: 7, 1: 13}, {0: 1, 1: 1, 2: 6}, {2: 5, 0: 1, 1: 1}]
    plans += [{0: 1, 1: 1, 2: 1}] * 6
    for plan in plans:
        out = d.step(plan)
        assert out.logits.shape == (len(plan), d.spec.vocab_size)
        check_logits(d, hf, plan, out)
    assert d.seqs[1].computed > 16  # contexts span many blocks
    assert fused_calls == ([3] * 6 if decode == "fused" else [])  # the decode-only steps, 3 sequences each


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_equals_generate(arch, checkpoints, hf_models, device, dtype):
    d, hf = Driver(checkpoints[arch], seed=2, device=device, dtype=dtype), hf_models[arch]
    prompts = {0: [1, 50, 60, 70], 1: list(range(100, 119)), 2: [9]}
    new = 14
    for sid, p in prompts.items():
        d.add(sid, p)
    d.step({sid: len(p) for sid, p in prompts.items()}, return_logits=False)
    for _ in range(new - 1):
        d.step({sid: 1 for sid in prompts}, return_logits=False)
    eos = set(d.spec.eos_token_ids)
    for sid, p in prompts.items():
        ref = hf.generate(torch.tensor([p], device=device), max_new_tokens=new, do_sample=False)[0, len(p):].tolist()
        ours = d.seqs[sid].tokens[len(p):]
        cut = next((i + 1 for i, t in enumerate(ours) if t in eos), len(ours))
        check_greedy(hf, p, ours[:cut], ref, dtype)


def _edit_config(src, dst, **changes):
    import json
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _drop_lm_head(path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / "model.safetensors"))
    del tensors["lm_head.weight"]
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


VARIANTS = {
    "rope-linear": dict(rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 50000.0}),
    "rope-llama3": dict(rope_parameters={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64, "rope_theta": 500000.0}),
    "tied": dict(tie_word_embeddings=True),
    "sliding-window": dict(sliding_window=6),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_config_variants_match_transformers(variant, checkpoints, tmp_path, device, dtype):
    arch = "mistral" if variant == "sliding-window" else "llama"
    path = _edit_config(checkpoints[arch], tmp_path / variant, **VARIANTS[variant])
    if variant == "tied":
        _drop_lm_head(path)
    d, hf = Driver(path, seed=3, device=device, dtype=dtype), hf_model(path, device, dtype)
    if variant == "tied":  # one tensor serves both ends, not a copy
        assert d.runner.model.lm_head is d.runner.model.embed
    d.add(0, list(range(60, 75)))
    d.add(1, [4, 5, 6])
    plans = [{0: 15, 1: 3}] + [{0: 1, 1: 1}] * 4
    for plan in plans:
        check_logits(d, hf, plan, d.step(plan))
