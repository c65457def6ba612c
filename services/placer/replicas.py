"""Replicas: an LLM that no single unit can serve at its rate runs in several units.

One unit runs at most `max_num_seqs` sequences of an LLM and its decode step does not shrink in
proportion to the unit's devices, so past some rate a bigger unit stops helping (on the A100 table a 7B
LLM tops out near 25 req/s on any unit). `replicate(planner, k)` gives every such LLM
r = min(k, ceil(rate / best single-unit throughput), devices / its smallest unit) planner keys: its own
name and `name#2` ... `name#r`, each an LLMSpec with rate / r. The search then places keys like LLMs,
never two keys of one LLM in the same unit, and the Placement names each replica by the served name
(`planner.base`), so workers load it and the router spreads its requests over the units hosting it.
"""

from __future__ import annotations

import math
from dataclasses import replace


def best_alone(planner, name: str) -> float:
    """The most req/s any unit size serves of `name` alone at its rate (capped at the rate)."""
    sizes = [1 << i for i in range(planner.dpn.bit_length()) if 1 << i <= planner.dpn]
    served = [est.served for n in sizes if (est := planner.unit_estimate(n, (name,), "spatial")) is not None]
    return max(served, default=0.0)


def count(planner, name: str, max_replicas: int) -> int:
    rate, alone = planner.rates[name], best_alone(planner, name)
    if rate <= 0 or alone >= rate * (1 - 1e-6) or alone <= 0:
        return 1
    room = planner.nodes * planner.dpn // planner.min_devices[name]
    return max(1, min(max_replicas, math.ceil(rate / alone), room))


def replicate(planner, max_replicas: int) -> None:
    """Split, in place, the planner's LLMs that need it into replicas (keys, rates, min devices)."""
    for name in list(planner.llms):
        r = count(planner, name, max_replicas)
        if r == 1:
            continue
        spec, rate, devices = planner.llms.pop(name), planner.rates.pop(name), planner.min_devices.pop(name)
        del planner.base[name]
        for i in range(r):
            key = name if i == 0 else f"{name}#{i + 1}"
            planner.llms[key] = replace(spec, name=key, rate=rate / r)
            planner.rates[key], planner.min_devices[key], planner.base[key] = rate / r, devices, name
    planner._memo.clear()
