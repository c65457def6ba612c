"""Worker: llama.cpp through llama-cpp-python's high-level `Llama`, f32 GGUF of the same weights, own venv.

`Llama` runs ONE sequence at a time (multi-sequence batches exist only in the low-level C API), so the
64 requests run SEQUENTIALLY: per request reset(), then `generate(prompt ids, temp=0)` (greedy) until
the request's output length (generate does not stop at EOS; we stop it). n_threads = n_threads_batch =
--threads, n_ctx 1024, n_batch 512 (a whole prompt per llama_decode). Protocol: protocol.py."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol  # noqa: E402


def make_llm(gguf: str, threads: int):
    from llama_cpp import Llama

    return Llama(model_path=gguf, n_ctx=1024, n_batch=512, n_ubatch=512, n_threads=threads,
                 n_threads_batch=threads, seed=0, verbose=False)


def run(llm, ids: list[int], n: int) -> list[int]:
    """Greedy: the first n tokens after prompt `ids` (a fresh context: no prefix reuse)."""
    llm.reset()
    out = []
    for tok in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        out.append(tok)
        if len(out) == n:
            return out
    return out


def main() -> None:
    a = protocol.parse()
    import llama_cpp

    llm = make_llm(a.gguf, a.threads)
    if a.workload == "throughput":
        reqs = protocol.load_requests(a.requests)
        run(llm, reqs[0][0], 4)  # warm-up
        counts = []
        secs = protocol.timed(lambda: counts.extend(len(run(llm, ids, n)) for ids, n in reqs))
        r = {"tokens": sum(counts), "seconds": secs, "tok_per_s": sum(counts) / secs, "batching": "sequential"}
    else:
        prompt = protocol.decode_prompt(a.context)
        r = protocol.decode_ms(lambda n: protocol.timed(lambda: run(llm, prompt, n)), a.steps, a.reps)
    info = llama_cpp.llama_print_system_info().decode()
    protocol.emit(r | {"llama_cpp_python": llama_cpp.__version__, "system_info": info, "threads": a.threads})


if __name__ == "__main__":
    main()
