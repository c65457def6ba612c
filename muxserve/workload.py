"""Seeded multi-LLM request lists: the multiplexing benchmarks and the simulator replay the same ones.

`generate`: popularity p_i ~ (i+1)^-alpha over the models in the order given (the first is the most
popular), Poisson arrivals at `rate` req/s in total. `generate_rates`: one arrival process per model
at its own rate (Poisson, or Gamma with a coefficient of variation `cv`), over `duration_s` seconds.
Prompt and output lengths are drawn per request from a chat-like (log-normal) distribution around
the given means, clipped to [min_len, 4 x mean], and fixed per request (ignore_eos), so every
policy replays identical work. With vocab 0 the prompt ids are zeros (only lengths matter).
"""

from __future__ import annotations

import heapq
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


def _prompt(rng: random.Random, mean: float, vocab: int) -> tuple[int, ...]:
    n = chat_length(rng, mean)
    return tuple(rng.randrange(3, vocab) for _ in range(n)) if vocab else (0,) * n


def generate(models: list[str], alpha: float, rate: float, n: int, seed: int, prompt_mean: float,
             output_mean: float, vocab: int) -> list[Request]:
    """n requests over `models`, arrivals Poisson at `rate` req/s (all models together)."""
    rng = random.Random(seed)
    probs, t, out = popularity(len(models), alpha), 0.0, []
    for i in range(n):
        t += rng.expovariate(rate)
        model = rng.choices(models, probs)[0]
        prompt = _prompt(rng, prompt_mean, vocab)
        out.append(Request(f"q{i}", model, t, prompt, chat_length(rng, output_mean)))
    return out


def _gaps(rng: random.Random, rate: float, cv: float):
    """Inter-arrival times with mean 1/rate: exponential for cv 1, else Gamma(1/cv^2, cv^2/rate)."""
    shape = 1.0 / (cv * cv)
    while True:
        yield rng.expovariate(rate) if cv == 1 else rng.gammavariate(shape, 1.0 / (shape * rate))


def generate_rates(rates: dict[str, float], duration_s: float, seed: int, prompt_mean: float,
                   output_mean: float, vocab: int = 0, cv: float = 1.0) -> list[Request]:
    """Each model's own arrival process at rates[model] req/s for duration_s seconds, merged in time."""
    if cv <= 0:
        raise ValueError(f"cv must be > 0, got {cv}")
    rng = random.Random(seed)
    streams = []
    for model, rate in rates.items():
        if rate > 0:
            t, gaps = 0.0, _gaps(random.Random(rng.random()), rate, cv)
            times = []
            while (t := t + next(gaps)) < duration_s:
                times.append((t, model))
            streams.append(times)
    out = []
    for i, (t, model) in enumerate(heapq.merge(*streams)):
        out.append(Request(f"q{i}", model, t, _prompt(rng, prompt_mean, vocab), chat_length(rng, output_mean)))
    return out
