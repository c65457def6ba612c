"""Batch-1 decode step of a ~350M-parameter Llama vs the memory-bandwidth bound, and vs transformers.

A decode step at batch 1 reads every weight it uses once, so its floor is bytes_read / bandwidth,
where bytes_read is every weight except the embedding table (a step reads one row of it; with tied
embeddings the table is the LM head and counts in full). Bandwidth is measured in the same run (a
1 GiB fp32 tensor sum: reads only, like the weights). Random weights are written to a temp dir (fp32).

On a shared machine the bandwidth and the step times drift with other tenants, so the run is split
into rounds; each round measures the bandwidth, then this engine's step, then transformers' generate,
each as the best of a few repetitions (the least disturbed one). Every round yields its own ratios to
the bound; the summary is their median. Prints one JSON line at the end.

    python bench/decode_bandwidth.py [--threads 1] [--rounds 5] [--steps 8] [--context 128]
                                     [--device cpu|cuda] [--dtype float32|bfloat16|float16]

On CUDA every timing synchronizes the device first and last; the probe sums a 1 GiB tensor on it.
On a Linux CPU the engine's weights and the probe sit on transparent huge pages where the kernel
allows (services/worker/engine/hugepages.py); --with-4k-pages adds, in every round, the same engine
with its weights on ordinary pages ("engine_4k").
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
from services.worker.engine.hugepages import huge_copy  # noqa: E402
from services.worker.engine.loader import load_weights  # noqa: E402
from services.worker.engine.config import EngineConfig  # noqa: E402
from services.worker.engine.pool import allocate_pool, blocks_for_tokens  # noqa: E402
from services.worker.engine.runner import ModelRunner, keep_freed_memory  # noqa: E402
from services.worker.engine.types import SamplingParams, SeqStep, StepInput  # noqa: E402

BLOCK = EngineConfig.block_size


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


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def bandwidth_gbs(x: torch.Tensor, reps: int = 3) -> float:
    """Read bandwidth (GB/s): best of `reps` sums over `x`."""
    best = float("inf")
    for _ in range(reps):
        sync(x.device)
        t0 = time.perf_counter()
        x.sum()
        sync(x.device)
        best = min(best, time.perf_counter() - t0)
    return x.numel() * x.element_size() / best / 1e9


class EngineDecode:
    """This engine's runner with one sequence: a `context`-token prefill, then batch-1 decode steps."""

    def __init__(self, path: Path, context: int, max_steps: int, device="cpu", dtype=torch.float32,
                 huge_pages: bool = True):
        spec, weights = load_weights(path, dtype, device, huge_pages)
        n = blocks_for_tokens(context + max_steps + 1, BLOCK, spec.num_layers, spec.num_kv_heads)
        pool = allocate_pool(n, BLOCK, spec.head_dim, dtype, device)
        self.runner, self.device = ModelRunner(spec, weights, pool, BLOCK, device), device
        self.table, self.context = list(range(n)), context
        embed = weights["embed"]
        tied = "lm_head" not in weights
        self.bytes_read = spec.weight_bytes - (0 if tied else embed.numel() * embed.element_size())
        self.weight_bytes = spec.weight_bytes

    def _step(self, tokens: list[int], start: int) -> int:
        seq = SeqStep(0, tokens, start, self.table, SamplingParams())
        return self.runner.execute(StepInput("b", [seq])).token_ids[0]

    def best_step_ms(self, steps: int) -> float:
        """Prefill the context again, then the best of `steps` decode steps (ms)."""
        tok, best = self._step(list(range(3, 3 + self.context)), 0), float("inf")
        for i in range(steps):
            sync(self.device)
            t0 = time.perf_counter()
            tok = self._step([tok], self.context + i)  # the token id comes back to the host: a sync
            best = min(best, time.perf_counter() - t0)
        return best * 1e3


class HFDecode:
    """transformers' generate (greedy, its KV cache): ms per generated token, prefill subtracted."""

    def __init__(self, path: Path, context: int, device="cpu", dtype=torch.float32):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        self.ids, self.device = torch.arange(3, 3 + context, device=device)[None], device

    def _gen(self, n: int) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        self.model.generate(self.ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        sync(self.device)
        return time.perf_counter() - t0

    def best_step_ms(self, steps: int, reps: int = 2) -> float:
        long = min(self._gen(steps + 1) for _ in range(reps))
        short = min(self._gen(1) for _ in range(reps))
        return (long - short) / steps * 1e3


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for k, v in dict(layers=24, hidden=1024, heads=16, kv_heads=16, intermediate=2816, vocab=32000,
                     steps=8, context=128, rounds=5, threads=0).items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=int, default=v)
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--with-4k-pages", action="store_true", help="also the engine with weights on 4 KiB pages")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    a = ap.parse_args(argv)
    dtype = getattr(torch, a.dtype)
    if a.threads:
        torch.set_num_threads(a.threads)
    keep_freed_memory()  # the engine's allocator setting, for every system and the bandwidth probe alike
    with tempfile.TemporaryDirectory() as tmp:
        path = write_random_llama(Path(tmp) / "llama", a)
        eng = EngineDecode(path, a.context, a.steps, a.device, dtype)
        hf = None if a.skip_transformers else HFDecode(path, a.context, a.device, dtype)
        eng4k = EngineDecode(path, a.context, a.steps, a.device, dtype, huge_pages=False) if a.with_4k_pages else None
        probe = huge_copy(torch.ones(1 << 28, device=a.device))  # 1 GiB of fp32, on the pages the weights get
        eng.best_step_ms(2)  # warm-up
        eng4k and eng4k.best_step_ms(2)
        hf and hf.best_step_ms(2, reps=1)
        rounds = []
        for r in range(a.rounds):
            gbs = bandwidth_gbs(probe)
            bound = eng.bytes_read / (gbs * 1e9) * 1e3
            row = {"gbs": gbs, "bound_ms": bound, "engine_ms": eng.best_step_ms(a.steps)}
            if eng4k:
                row["engine_4k_ms"] = eng4k.best_step_ms(a.steps)
            if hf:
                row["hf_ms"] = hf.best_step_ms(a.steps)
            rounds.append(row)
            print(f"round {r}: {gbs:5.1f} GB/s  bound {bound:6.1f} ms  " + "  ".join(
                f"{name} {row[k]:6.1f} ms ({100 * bound / row[k]:5.1f}%)" for name, k in
                (("engine", "engine_ms"), ("engine_4k", "engine_4k_ms"), ("transformers", "hf_ms")) if k in row),
                flush=True)
    med = lambda key: statistics.median(r["bound_ms"] / r[key] for r in rounds)  # noqa: E731
    summary = {"device": a.device, "dtype": a.dtype, "threads": torch.get_num_threads(),
               "weight_bytes": eng.weight_bytes, "bytes_read": eng.bytes_read,
               "context": a.context, "rounds": rounds, "engine_of_bound": med("engine_ms")}
    if eng4k:
        summary["engine_4k_of_bound"] = med("engine_4k_ms")
    if hf:
        summary["transformers_of_bound"] = med("hf_ms")
    print(f"threads {summary['threads']}  weights {eng.weight_bytes / 1e6:.0f} MB, read per step "
          f"{eng.bytes_read / 1e6:.0f} MB  median of rounds: engine {100 * summary['engine_of_bound']:.1f}% of bound"
          + (f", engine_4k {100 * summary['engine_4k_of_bound']:.1f}%" if eng4k else "")
          + (f", transformers {100 * summary['transformers_of_bound']:.1f}%" if hf else ""))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
