"""Worker: this engine (`--system engine`; MUXSERVE_NATIVE=0 in the environment for its torch path) or
transformers (`--system transformers`: the continuous batching behind generate_batch for throughput,
model.generate for decode), under the project's own Python. Protocol: protocol.py.

Throughput reuses bench/engine_throughput.py's run_engine / run_hf_cb (the same code that bench runs);
the result also carries the CPU's ISAs, the native build and the calibration's path choices."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/
import engine_throughput as et  # noqa: E402
import protocol  # noqa: E402

ENGINE_ARGS = dict(block_size=32, num_blocks=40000, prefill_tokens=4096, device="cpu", dtype="float32")


def engine_decode_gen(path: str, context: int):
    """gen(n) through UnitEngine.generate at batch 1 (the whole engine: scheduler, jobs, sampling)."""
    from services.worker.engine.config import EngineConfig, LLMConfig
    from services.worker.engine.engine import UnitEngine
    from services.worker.engine.types import SamplingParams

    eng = UnitEngine([LLMConfig("m", path)], EngineConfig(max_num_seqs=4))
    prompt = protocol.decode_prompt(context)

    def gen(n: int) -> float:
        return protocol.timed(lambda: eng.generate("m", [prompt], SamplingParams(max_tokens=n, ignore_eos=True)))
    return gen, eng


def hf_decode_gen(path: str, context: int):
    model = et.hf_model(path, "cpu")
    ids = torch.tensor([protocol.decode_prompt(context)])

    def gen(n: int) -> float:
        with torch.no_grad():
            return protocol.timed(lambda: model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                                         pad_token_id=0))
    return gen, None


def main() -> None:
    a = protocol.parse()
    torch.set_num_threads(a.threads)
    from services.worker.engine import native
    from services.worker.engine.runner import keep_freed_memory

    keep_freed_memory()  # as engine_throughput.py does, before any system runs
    print(native.describe(), flush=True)
    if a.workload == "throughput":
        reqs = protocol.load_requests(a.requests)
        args = SimpleNamespace(requests=len(reqs), **ENGINE_ARGS)
        r = (et.run_engine if a.system == "engine" else et.run_hf_cb)(a.model, reqs, args)
        r["tok_per_s"] = r["tokens"] / r["seconds"]
    else:
        gen, eng = (engine_decode_gen if a.system == "engine" else hf_decode_gen)(a.model, a.context)
        r = protocol.decode_ms(gen, a.steps, a.reps)
        eng and eng.close()
    protocol.emit(r | et.paths() | {"torch_threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
