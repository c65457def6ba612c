"""Engine throughput: UnitEngine vs transformers' continuous batching vs padded static generate.

In ONE process, the same random-weight model of --arch (default llama; any model_type of transformers'
causal-LM registry the engine supports, written to a temp dir by muxserve.tiny) and the same
requests (prompt and output lengths drawn with a fixed seed, ignore_eos, greedy) go through:
  engine  - services.worker.engine.UnitEngine (ADBS scheduler, head-wise paged KV pool), on the path
            support.py chooses for the arch (`path:` in the output)
  engine_generic - the same engine with the fast path switched off (support.FAST = False): the generic path
  engine_nn_linear - generic path only: transformers' nn.Linear instead of model.matrix_product
            (generic.ROUTE_LINEARS = False)
  hf_cb   - transformers' continuous batching (the manager behind model.generate_batch, with each
            request's own max_new_tokens, EOS disabled)
  hf_pad  - model.generate on left-padded batches of --batch-size in arrival order (a batch runs to
            its longest output; only each request's own tokens count)
and prints output tokens/s of each and the ratios (one JSON line at the end).

    python bench/engine_throughput.py                       # 64 requests, ~25M-param Llama, CPU
    python bench/engine_throughput.py --requests 16 --systems engine,hf_pad
    python bench/engine_throughput.py --arch qwen3 --systems engine,hf_cb     # the generic path (generic.py)
    python bench/engine_throughput.py --arch llama --systems engine,engine_generic  # fast vs generic path
    python bench/engine_throughput.py --device cuda --dtype bfloat16 [--hidden 2048 --layers 16 ...]
    MUXSERVE_NATIVE=0 python bench/engine_throughput.py --systems engine       # the engine's torch path
    MUXSERVE_NATIVE_ISA=avx2 python bench/engine_throughput.py --systems engine  # the AVX2 build on any AVX2 CPU

Prints the CPU's instruction sets, the native build and which path (native or torch) each weight shape and
the fused decode step took (calibrate.py), also in the JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from services.worker.engine.config import EngineConfig, LLMConfig  # noqa: E402


def make_requests(n: int, seed: int, prompt: tuple[int, int], output: tuple[int, int], vocab: int):
    g = torch.Generator().manual_seed(seed)
    reqs = []
    for _ in range(n):
        p = int(torch.randint(prompt[0], prompt[1] + 1, (1,), generator=g))
        o = int(torch.randint(output[0], output[1] + 1, (1,), generator=g))
        reqs.append((torch.randint(3, vocab, (p,), generator=g).tolist(), o))
    return reqs


def run_engine_generic(path: str, reqs, args) -> dict:
    from services.worker.engine import support

    support.FAST = False
    try:
        return run_engine(path, reqs, args)
    finally:
        support.FAST = True


def run_engine_nn_linear(path: str, reqs, args) -> dict:
    from services.worker.engine import generic

    generic.ROUTE_LINEARS = False
    try:
        return run_engine(path, reqs, args)
    finally:
        generic.ROUTE_LINEARS = True


def run_engine(path: str, reqs, args) -> dict:
    from services.worker.engine.engine import UnitEngine
    from services.worker.engine.runner import freeze_heap
    from services.worker.engine.types import SamplingParams

    cfg = EngineConfig(block_size=args.block_size, num_blocks=args.num_blocks * 16 // args.block_size,
                       max_num_seqs=args.requests, max_prefill_tokens=args.prefill_tokens, device=args.device,
                       dtype=args.dtype)
    eng = UnitEngine([LLMConfig("m", path)], cfg)
    engine_path = eng.llms["m"].spec.engine
    eng.generate("m", [reqs[0][0]], SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up
    freeze_heap()  # as the worker and its job processes do once loaded
    t0 = time.perf_counter()
    for i, (ids, n) in enumerate(reqs):
        eng.add_request(f"r{i}", "m", prompt_token_ids=ids, sampling=SamplingParams(max_tokens=n, ignore_eos=True))
    tokens, steps = 0, 0
    while eng.has_unfinished():
        tokens += sum(len(c.token_ids) for c in eng.step().values())
        steps += 1
    elapsed = time.perf_counter() - t0
    pre = eng.stats()["preemptions"]
    eng.close()
    return {"tokens": tokens, "seconds": elapsed, "steps": steps, "preemptions": pre, "path": engine_path}


def hf_model(path: str, device: str, dtype: str = "float32"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def run_hf_cb(path: str, reqs, args) -> dict:
    from transformers import GenerationConfig

    model = hf_model(path, args.device, args.dtype)
    gen = GenerationConfig(do_sample=False, eos_token_id=-1, pad_token_id=0, max_new_tokens=max(n for _, n in reqs))
    with model.continuous_batching_context_manager(generation_config=gen, block=True, timeout=30) as mgr:
        t0 = time.perf_counter()
        for i, (ids, n) in enumerate(reqs):
            mgr.add_request(ids, request_id=f"r{i}", max_new_tokens=n, eos_token_id=-1)
        done: dict = {}
        while len(done) < len(reqs):
            res = mgr.get_result(timeout=1)
            if res is not None and res.is_finished():
                done[res.request_id] = len(res.generated_tokens)
            elif res is None and not mgr.is_running():
                raise RuntimeError("transformers' continuous batching loop stopped")
        elapsed = time.perf_counter() - t0
    return {"tokens": sum(done.values()), "seconds": elapsed}


@torch.no_grad()
def run_hf_pad(path: str, reqs, args) -> dict:
    model = hf_model(path, args.device, args.dtype)
    tokens, t0 = 0, time.perf_counter()
    for b in range(0, len(reqs), args.batch_size):
        batch = reqs[b:b + args.batch_size]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for i, (p, _) in enumerate(batch):  # left padding
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        model.generate(ids.to(args.device), attention_mask=mask.to(args.device), do_sample=False,
                       max_new_tokens=max(n for _, n in batch), min_new_tokens=max(n for _, n in batch),
                       eos_token_id=None, pad_token_id=0)
        tokens += sum(n for _, n in batch)
    sync(args.device)
    return {"tokens": tokens, "seconds": time.perf_counter() - t0}


RUNNERS = {"engine": run_engine, "engine_generic": run_engine_generic, "engine_nn_linear": run_engine_nn_linear, "hf_cb": run_hf_cb, "hf_pad": run_hf_pad}


def paths() -> dict:
    """The CPU's ISAs, the native build in use and the calibration's choices of this process (printed too)."""
    from services.worker.engine import calibrate, native

    k, chosen = native.kernels(), calibrate.decisions()
    for d in chosen:
        print(f"path: {d['what']}: {d['path']} ({d['why']})")
    return {"cpu_isas": list(native.cpu_isas()), "native_isa": None if k is None else k.isa,
            "native_mode": native.mode(), "paths": {d["what"]: d["path"] for d in chosen}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="llama", help="a model_type of transformers' causal-LM registry")
    ap.add_argument("--window", type=int, default=4096, help="sliding window where the arch has one")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt", type=int, nargs=2, default=(16, 256))
    ap.add_argument("--output", type=int, nargs=2, default=(32, 256))
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=1408)
    ap.add_argument("--batch-size", type=int, default=16, help="hf_pad batch size")
    ap.add_argument("--block-size", type=int, default=EngineConfig.block_size, help="engine KV block size (tokens)")
    ap.add_argument("--decode-group-ratio", type=float, default=None,
                    help="engine: attention.DECODE_GROUP_RATIO (default: the engine's)")
    ap.add_argument("--gather-max-rows", type=int, default=None,
                    help="engine: attention.GATHER_MAX_ROWS (default: the engine's)")
    ap.add_argument("--no-panels", action="store_true", help="engine: matrices [K, N], not column panels")
    ap.add_argument("--num-blocks", type=int, default=40000, help="engine pool, head-wise blocks of 16 tokens (scaled to --block-size)")
    ap.add_argument("--prefill-tokens", type=int, default=4096, help="engine prefill token budget")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--systems", default="engine,hf_cb,hf_pad")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for every system (0 = torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import services.worker.engine.attention as attention
    import services.worker.engine.loader as loader

    if args.decode_group_ratio is not None:
        attention.DECODE_GROUP_RATIO = args.decode_group_ratio
    if args.gather_max_rows is not None:
        attention.GATHER_MAX_ROWS = args.gather_max_rows
    if args.no_panels:
        loader.PANELS = False
    from services.worker.engine.runner import keep_freed_memory

    keep_freed_memory()  # the engine's allocator setting, applied before ANY system runs: same for all
    from muxserve.tiny import write_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        window = {} if args.arch in ("llama", "mistral", "qwen2") else {"sliding_window": args.window}
        path = str(write_tiny_checkpoint(tmp, args.arch, args.hidden, args.layers, args.heads, args.kv_heads,
                                         args.intermediate, seed=0, max_position_embeddings=4096,
                                         max_params=10**10, **window))
        params = sum(t.numel() for t in hf_model(path, "cpu").parameters())
        reqs = make_requests(args.requests, args.seed, args.prompt, args.output, 384)
        results = {}
        from services.worker.engine import native

        print(native.describe(), flush=True)
        for name in args.systems.split(","):
            r = RUNNERS[name](path, reqs, args)
            r["tok_per_s"] = r["tokens"] / r["seconds"]
            results[name] = r
            print(f"{name:7s} {r['tokens']:6d} tokens in {r['seconds']:7.2f}s = {r['tok_per_s']:8.1f} tok/s"
                  + (f" ({r['path']} path)" if "path" in r else ""), flush=True)
    ratios = {f"engine/{k}": results["engine"]["tok_per_s"] / v["tok_per_s"]
              for k, v in results.items() if k != "engine" and "engine" in results}
    summary = {"arch": args.arch, "params": params, "requests": args.requests, "threads": torch.get_num_threads(),
               "device": args.device, "dtype": args.dtype, "results": results, "ratios": ratios, **paths()}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
