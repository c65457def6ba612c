"""Batch-1 decode step of a ~350M-parameter Llama vs the memory-bandwidth bound, and vs transformers.

A decode step at batch 1 reads every weight it uses once, so its floor is bytes_read / bandwidth,
where bytes_read is every weight except the embedding table (a step reads one row of it; with tied
embeddings the table is the LM head and counts in full). Bandwidth is measured in the same run (a
1 GiB fp32 tensor sum: reads only, like the weights). Random weights are written to a temp dir (fp32).

On a shared machine the bandwidth and the step times drift with other tenants (within seconds), so the
run is split into rounds, and inside a round the probe and this engine's decode steps take turns: one
bandwidth sample, one step of each engine, `--steps` times. A round's bound uses its best bandwidth
sample and each engine its best step, all from the same stretch of time; transformers' generate runs
after them (best of 2). Every round yields its own ratios; the summary is their median. One JSON line
at the end.

    MUXSERVE_NATIVE_ISA=avx2 python bench/decode_bandwidth.py   # the AVX2 build (prints the ISA and paths)
    python bench/decode_bandwidth.py [--threads 1] [--rounds 5] [--steps 8] [--context 128] [--batch 1]
                                     [--device cpu|cuda] [--dtype float32|bfloat16|float16]

`--batch B` decodes B sequences per step (each with its own context): the bound stays the weights' bytes over the
bandwidth (a step reads them once whatever B; the B contexts' K/V come on top), so it shows how close a small
batch stays to a batch-1 step.

On CUDA every timing synchronizes the device first and last; the probe sums a 1 GiB tensor on it.
On a Linux CPU the engine's weights and the probe sit on transparent huge pages where the kernel
allows (services/worker/engine/hugepages.py). `--also` adds variants of the engine, measured in every
round, step for step with it: `4k-pages` (weights on ordinary 4 KiB pages), `no-fused` (decode steps on
the torch path, layer by layer, instead of fused.py's one native call), `decode-bags` / `decode-gather`
(no-fused, and every decode group through embedding_bags / small ones gathered: attention.GATHER_MAX_ROWS
0 / 64), `no-native` (the engine where the native kernels cannot run: matrices [K, N] with K split over
the threads in one bmm, small decode groups gathered).
"""

from __future__ import annotations

import argparse
import json
from array import array
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
import services.worker.engine.attention as attention  # noqa: E402
import services.worker.engine.model as model  # noqa: E402
from services.worker.engine.hugepages import huge_copy  # noqa: E402
from services.worker.engine.loader import load_weights  # noqa: E402
from services.worker.engine.config import EngineConfig  # noqa: E402
from services.worker.engine.pool import allocate_pool, blocks_for_tokens  # noqa: E402
from services.worker.engine.runner import ModelRunner, keep_freed_memory  # noqa: E402
from services.worker.engine.types import SamplingParams, SeqStep, StepInput  # noqa: E402

BLOCK = EngineConfig.block_size
VARIANTS = {"4k-pages": {"huge_pages": False}, "decode-bags": {"gather_max_rows": 0, "fused": False},
            "decode-gather": {"gather_max_rows": 64, "fused": False}, "no-fused": {"fused": False},
            "no-native": {"panels": False, "gather_max_rows": 64, "fused": False}}


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
    """This engine's runner with `batch` sequences: `context`-token prefills, then decode steps of all of them."""

    def __init__(self, path: Path, context: int, max_steps: int, device="cpu", dtype=torch.float32,
                 huge_pages: bool = True, gather_max_rows: int | None = None, panels: bool = True,
                 native: bool = True, fused: bool = True, batch: int = 1):
        spec, weights = load_weights(path, dtype, device, huge_pages, panels)
        self.gather_max_rows = attention.GATHER_MAX_ROWS if gather_max_rows is None else gather_max_rows
        self.gemv = model.GEMV if native else None
        self.fused = fused
        n = blocks_for_tokens(context + max_steps + 1, BLOCK, spec.num_layers, spec.num_kv_heads)
        pool = allocate_pool(n * batch, BLOCK, spec.head_dim, dtype, device)
        self.runner, self.device = ModelRunner(spec, weights, pool, BLOCK, device), device
        self.tables = [array("i", range(i * n, (i + 1) * n)) for i in range(batch)]  # int32, as the engine ships
        self.context = context
        embed = weights["embed"]
        tied = "lm_head" not in weights
        self.bytes_read = spec.weight_bytes - (0 if tied else embed.numel() * embed.element_size())
        self.weight_bytes = spec.weight_bytes

    def _step(self, tokens: list[list[int]], start: int) -> list[int]:
        """tokens[i]: sequence i's tokens at positions start.. -> each sequence's next token."""
        seqs = [SeqStep(i, t, start, table, SamplingParams()) for i, (t, table) in enumerate(zip(tokens, self.tables))]
        return self.runner.execute(StepInput("b", seqs)).token_ids

    def restart(self) -> None:
        """Prefill the contexts again; decode steps continue from them."""
        self.toks = self._step([list(range(3 + i, 3 + i + self.context)) for i in range(len(self.tables))], 0)
        self.pos = self.context

    def step_ms(self) -> float:
        """One decode step (ms), with this engine's decode attention setting."""
        default = attention.GATHER_MAX_ROWS, model.GEMV, model.FUSED
        attention.GATHER_MAX_ROWS, model.GEMV, model.FUSED = self.gather_max_rows, self.gemv, self.fused
        try:
            sync(self.device)
            t0 = time.perf_counter()
            self.toks = self._step([[t] for t in self.toks], self.pos)  # token ids come back to the host: a sync
            self.pos += 1
            return (time.perf_counter() - t0) * 1e3
        finally:
            attention.GATHER_MAX_ROWS, model.GEMV, model.FUSED = default


def interleaved_round(probe: torch.Tensor, engines: dict[str, EngineDecode], steps: int) -> dict[str, float]:
    """Best bandwidth sample (GB/s) and each engine's best step (ms), taking turns `steps` times."""
    for e in engines.values():
        e.restart()
    best = {"gbs": 0.0} | {f"{name}_ms": float("inf") for name in engines}
    for _ in range(steps):
        best["gbs"] = max(best["gbs"], bandwidth_gbs(probe, reps=1))
        for name, e in engines.items():
            best[f"{name}_ms"] = min(best[f"{name}_ms"], e.step_ms())
    return best


class HFDecode:
    """transformers' generate (greedy, its KV cache): ms per generated token, prefill subtracted."""

    def __init__(self, path: Path, context: int, device="cpu", dtype=torch.float32, batch: int = 1):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        self.ids = torch.stack([torch.arange(3 + i, 3 + i + context, device=device) for i in range(batch)])
        self.device = device

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
                     steps=8, context=128, rounds=5, threads=0, batch=1).items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=int, default=v)
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--also", default="", help="engine variants measured too: 4k-pages,decode-bags")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    a = ap.parse_args(argv)
    dtype = getattr(torch, a.dtype)
    if a.threads:
        torch.set_num_threads(a.threads)
    keep_freed_memory()  # the engine's allocator setting, for every system and the bandwidth probe alike
    from services.worker.engine import calibrate, native

    print(native.describe(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_random_llama(Path(tmp) / "llama", a)
        eng = EngineDecode(path, a.context, a.steps, a.device, dtype, batch=a.batch)
        hf = None if a.skip_transformers else HFDecode(path, a.context, a.device, dtype, a.batch)
        variants = {f"engine_{v.replace('-', '_')}": EngineDecode(path, a.context, a.steps, a.device, dtype,
                                                                  batch=a.batch, **VARIANTS[v])
                    for v in filter(None, a.also.split(","))}
        probe = huge_copy(torch.ones(1 << 28, device=a.device))  # 1 GiB of fp32, on the pages the weights get
        engines = {"engine": eng, **variants}
        interleaved_round(probe, engines, 2)  # warm-up
        hf and hf.best_step_ms(2, reps=1)
        rounds = []
        for r in range(a.rounds):
            row = interleaved_round(probe, engines, a.steps)
            gbs = row["gbs"]
            row["bound_ms"] = bound = eng.bytes_read / (gbs * 1e9) * 1e3
            if hf:
                row["hf_ms"] = hf.best_step_ms(a.steps)
            rounds.append(row)
            print(f"round {r}: {gbs:5.1f} GB/s  bound {bound:6.1f} ms  " + "  ".join(
                f"{k[:-3].replace('hf', 'transformers')} {v:6.1f} ms ({100 * bound / v:5.1f}%)"
                for k, v in row.items() if k.endswith("_ms") and k != "bound_ms"), flush=True)
    med = lambda key: statistics.median(r["bound_ms"] / r[key] for r in rounds)  # noqa: E731
    summary = {"device": a.device, "dtype": a.dtype, "threads": torch.get_num_threads(), "batch": a.batch,
               "weight_bytes": eng.weight_bytes, "bytes_read": eng.bytes_read,
               "context": a.context, "rounds": rounds, "engine_of_bound": med("engine_ms")}
    for name in variants:
        summary[f"{name}_of_bound"] = med(f"{name}_ms")
    if hf:
        summary["transformers_of_bound"] = med("hf_ms")
    print(f"threads {summary['threads']}  weights {eng.weight_bytes / 1e6:.0f} MB, read per step "
          f"{eng.bytes_read / 1e6:.0f} MB  median of rounds: engine {100 * summary['engine_of_bound']:.1f}% of bound"
          + "".join(f", {name} {100 * summary[f'{name}_of_bound']:.1f}%" for name in variants)
          + (f", transformers {100 * summary['transformers_of_bound']:.1f}%" if hf else ""))
    k = native.kernels()
    summary.update(cpu_isas=list(native.cpu_isas()), native_isa=None if k is None else k.isa, native_mode=native.mode(),
                   paths={d["what"]: d["path"] for d in calibrate.decisions()})
    for d in calibrate.decisions():
        print(f"path: {d['what']}: {d['path']} ({d['why']})")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
