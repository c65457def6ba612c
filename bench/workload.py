"""Seeded multi-LLM request lists for the multiplexing benchmarks (and the simulator).

Popularity p_i ~ (i+1)^-alpha over the models in the order given (the first is the most popular),
Poisson arrivals at `rate` req/s in total, prompt and output lengths drawn per request from a
chat-like (log-normal) distribution around the given means, clipped to [min_len, 4 x mean], fixed
per request (ignore_eos), so every policy replays identical work.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    rid: str
    model: str
    arrival_s: float  # offset from the start of the replay
    prompt_ids: tuple[int, ...]
    max_tokens: int


def popularity(n: int, alpha: float) -> list[float]:
    w = [(i + 1) ** -alpha for i in range(n)]
    return [x / sum(w) for x in w]


def chat_length(rng: random.Random, mean: float, min_len: int = 4, sigma: float = 0.6) -> int:
    """A log-normal length with the given mean (ShareGPT-like spread), clipped to [min_len, 4 x mean]."""
    mu = math.log(mean) - sigma * sigma / 2
    return int(min(max(round(rng.lognormvariate(mu, sigma)), min_len), 4 * mean))


def generate(models: list[str], alpha: float, rate: float, n: int, seed: int, prompt_mean: float,
             output_mean: float, vocab: int) -> list[Request]:
    """n requests over `models`, arrivals Poisson at `rate` req/s (all models together)."""
    rng = random.Random(seed)
    probs, t, out = popularity(len(models), alpha), 0.0, []
    for i in range(n):
        t += rng.expovariate(rate)
        model = rng.choices(models, probs)[0]
        prompt = tuple(rng.randrange(3, vocab) for _ in range(chat_length(rng, prompt_mean)))
        out.append(Request(f"q{i}", model, t, prompt, chat_length(rng, output_mean)))
    return out
