"""What every worker script shares (stdlib only: it runs under each engine's own venv).

A worker is run as `python run_X.py --workload throughput|decode --model DIR [--gguf FILE]
--requests FILE --threads N [--context C --steps S --reps R]` and prints, as its LAST stdout line, one
JSON object: throughput -> {"tokens", "seconds", "tok_per_s", ...}; decode -> {"ms_per_token", ...}.

Throughput: all requests (prompt token ids, output length; EOS ignored, greedy) submitted at once,
timed from submission to the last token. Decode (batch 1): for a fresh prompt of `context` token ids,
gen(n) = seconds to prefill it and produce n tokens through the engine's own generate call; ms/token =
(best of reps gen(steps + 1) - best of reps gen(1)) / steps: the prefill and the first token cancel out.
"""

from __future__ import annotations

import argparse
import json
import time


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--system", default=None, help="which system, where one script runs several")
    ap.add_argument("--workload", choices=("throughput", "decode"), required=True)
    ap.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    ap.add_argument("--gguf", default=None, help="the same weights as GGUF (llama.cpp)")
    ap.add_argument("--requests", default=None, help="JSON [[prompt ids, output tokens], ...]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    return ap.parse_args(argv)


def load_requests(path: str) -> list[tuple[list[int], int]]:
    return [(list(p), int(n)) for p, n in json.load(open(path))]


def decode_prompt(context: int) -> list[int]:
    """The batch-1 prompt every system decodes after (decode_bandwidth.py's context ids)."""
    return list(range(3, 3 + context))


def decode_ms(gen, steps: int, reps: int) -> dict:
    """gen(n) -> seconds for prefill + n tokens. Returns ms/token of the decode steps (see module doc)."""
    gen(2)  # warm-up
    long = min(gen(steps + 1) for _ in range(reps))
    short = min(gen(1) for _ in range(reps))
    return {"ms_per_token": (long - short) / steps * 1e3, "gen_long_s": long, "gen_short_s": short,
            "steps": steps, "reps": reps}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def emit(result: dict) -> None:
    print(json.dumps(result), flush=True)
