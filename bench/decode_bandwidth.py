"""Batch-1 decode step of a ~350M-parameter Llama vs the memory-bandwidth bound, and vs transformers.

A decode step at batch 1 reads every weight once, so its floor is weight_bytes / bandwidth.
Bandwidth is measured in the same run (a large fp32 tensor sum: reads only, like the weights).
Random weights are written to a temp dir (fp32). Prints ms/step and % of the bound for this
engine's runner and for transformers' own generate on the same weights.

    python bench/decode_bandwidth.py [--layers 24 --hidden 1024 ...] [--steps 20] [--context 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from services.worker.engine.loader import load_weights   # noqa: E402
from services.worker.engine.pool import allocate_pool, blocks_for_tokens  # noqa: E402
from services.worker.engine.runner import ModelRunner  # noqa: E402
from services.worker.engine.types import SamplingParams, SeqStep, StepInput  # noqa: E402

BLOCK = 16


def write_random_llama(path: Path, a) -> Path:
    """config.json + model.safetensors with random fp32 weights (no HF init: fast)."""
    from safetensors.torch import save_file

    D, I, V, L = a.hidden, a.intermediate, a.vocab, a.layers
    hd, H = D // a.heads, a.kv_heads
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g) * 0.02  # noqa: E731
    t = {"model.embed_tokens.weight": rnd(V, D), "lm_head.weight": rnd(V, D), "model.norm.weight": torch.ones(D)}
    for i in range(L):
        p = f"model.layers.{i}."
        t |= {p + "input_layernorm.weight": torch.ones(D), p + "post_attention_layernorm.weight": torch.ones(D),
              p + "self_attn.q_proj.weight": rnd(D, D), p + "self_attn.k_proj.weight": rnd(H * hd, D),
              p + "self_attn.v_proj.weight": rnd(H * hd, D), p + "self_attn.o_proj.weight": rnd(D, D),
              p + "mlp.gate_proj.weight": rnd(I, D), p + "mlp.up_proj.weight": rnd(I, D),
              p + "mlp.down_proj.weight": rnd(D, I)}
    path.mkdir(parents=True, exist_ok=True)
    save_file(t, str(path / "model.safetensors"), metadata={"format": "pt"})
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=D, intermediate_size=I,
               num_hidden_layers=L, num_attention_heads=a.heads, num_key_value_heads=H, vocab_size=V,
               max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu",
               tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, torch_dtype="float32")
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def bandwidth_gbs(nbytes: int = 1 << 30, reps: int = 5) -> float:
    """Read bandwidth (GB/s): best of `reps` sums over a tensor of `nbytes`."""
    x = torch.ones(nbytes // 4)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9


def time_runner(path: Path, steps: int, context: int) -> tuple[float, int]:
    """Median ms per batch-1 decode step after a `context`-token prefill; and weight bytes."""
    spec, weights = load_weights(path)
    n = blocks_for_tokens(context + steps + 1, BLOCK, spec.num_layers, spec.num_kv_heads)
    pool = allocate_pool(n, BLOCK, spec.head_dim, torch.float32)
    runner = ModelRunner(spec, weights, pool, BLOCK)
    table, sp = list(range(n)), SamplingParams()
    tok = runner.execute(StepInput("b", [SeqStep(0, list(range(3, 3 + context)), 0, table, sp)])).token_ids[0]
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        tok = runner.execute(StepInput("b", [SeqStep(0, [tok], context + i, table, sp)])).token_ids[0]
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:]) * 1e3, spec.weight_bytes


def time_transformers(path: Path, steps: int, context: int) -> float:
    """ms per generated token of transformers' generate (greedy, KV cache), prefill subtracted."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.arange(3, 3 + context)[None]

    def gen(n: int) -> float:
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        return time.perf_counter() - t0

    gen(2)
    return (gen(steps + 1) - gen(1)) / steps * 1e3


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for k, v in dict(layers=24, hidden=1024, heads=16, kv_heads=16, intermediate=2816, vocab=32000,
                     steps=20, context=128).items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=int, default=v)
    ap.add_argument("--skip-transformers", action="store_true")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_random_llama(Path(tmp) / "llama", a)
        ms, wbytes = time_runner(path, a.steps, a.context)
        gbs = bandwidth_gbs()
        bound = wbytes / (gbs * 1e9) * 1e3
        print(f"threads {torch.get_num_threads()}  weights {wbytes / 1e6:.0f} MB  read bandwidth {gbs:.1f} GB/s  "
              f"bound {bound:.1f} ms/step")
        print(f"muxserve runner : {ms:7.1f} ms/step  {100 * bound / ms:5.1f}% of bound")
        if not a.skip_transformers:
            hf = time_transformers(path, a.steps, a.context)
            print(f"transformers    : {hf:7.1f} ms/step  {100 * bound / hf:5.1f}% of bound")


if __name__ == "__main__":
    main()
