"""Placement search: MuxServe's enumeration of unit splits with greedy, computation-first assignment.

For every way to split each node's devices into power-of-two units (nodes are interchangeable, so
a cluster split is a multiset of node splits), LLMs are taken in descending computation need
(rate x weight bytes) and each goes to the unit where it adds the most estimated served throughput
(memory and cost table permitting; ties go to the smaller, then emptier unit). The best split wins.

Policies share this code and differ in the unit estimate and in colocation:
- muxserve: units estimated with spatial-temporal multiplexing (or temporal where that is better);
  the search is also seeded with the best spatial and temporal layouts, re-estimated, so the
  result is never worse than either baseline's layout under MuxServe's scheduling.
- spatial: one LLM per unit, on the fewest devices that hold it (spatial.py), idle devices then
  doubling the units that gain most.
- temporal: colocation allowed, one job at a time per unit.

Fixed defects of the reference: a candidate's gain is kept with the unit it was computed for (no
index into a re-sorted list); the cost table interpolates; prefill share >= decode share; rates
are looked up by name, never by position.
"""

from __future__ import annotations

import logging
from itertools import combinations_with_replacement
from typing import Iterable

from .estimator import UnitEstimate, UnitEstimator
from .llmspec import LLMSpec
from .placement import LLMPlacement, Placement, Unit, unit_id
from .replicas import replicate
from .spatial import spatial_layout

log = logging.getLogger(__name__)
ESTIMATE_MODE = {"muxserve": "muxserve", "spatial": "spatial", "temporal": "temporal"}


class PlacementError(ValueError):
    """No placement exists (an LLM fits no unit, an empty cluster, ...); the message names why."""


def node_splits(devices: int) -> list[tuple[int, ...]]:
    """Ways to split one node's devices into power-of-two units, largest unit first."""
    sizes = [1 << i for i in range(devices.bit_length()) if 1 << i <= devices]

    def rec(left: int, cap: int) -> Iterable[tuple[int, ...]]:
        if left == 0:
            yield ()
        for s in reversed(sizes):
            if s <= min(left, cap):
                for rest in rec(left - s, s):
                    yield (s, *rest)
    return list(rec(devices, devices))


def cluster_splits(nodes: int, devices: int) -> list[tuple[tuple[int, ...], ...]]:
    return list(combinations_with_replacement(node_splits(devices), nodes))


Layout = list[tuple[int, int, tuple[str, ...]]]  # (node, unit size, LLM names) per unit


class Planner:
    """plan(policy) -> Placement for `llms` at `rates` (name -> req/s) on nodes x devices_per_node."""

    def __init__(self, llms: list[LLMSpec], rates: dict[str, float], nodes: int, devices_per_node: int,
                 estimator: UnitEstimator, units: list[tuple[int, int]] | None = None, max_replicas: int = 1):
        """`units`, when given, fixes the units as (node, size) pairs: only the assignment of LLMs to
        them is searched (re-placement inside the units the running workers hold). `max_replicas` > 1
        lets an LLM that no single unit can serve at its rate run in up to that many units (replicas),
        its rate split evenly among them (replicas.py)."""
        if nodes < 1 or devices_per_node < 1:
            raise PlacementError(f"empty cluster: {nodes} nodes x {devices_per_node} devices")
        if not llms:
            raise PlacementError("no LLMs to place")
        self.llms = {m.name: m for m in llms}
        self.rates = {m.name: float(rates.get(m.name, m.rate)) for m in llms}
        self.nodes, self.dpn, self.est = nodes, devices_per_node, estimator
        self.units = sorted(units, key=lambda u: (u[0], -u[1])) if units else None
        self._memo: dict[tuple, UnitEstimate | None] = {}
        self.min_devices = {m.name: self._min_devices(m) for m in llms}
        self.base = {m.name: m.name for m in llms}  # planner key -> served LLM name (replicas share it)
        if max_replicas > 1 and self.units is None:
            replicate(self, max_replicas)

    def _min_devices(self, m: LLMSpec) -> int:
        self.est.cost.require(m.cost_key, m.name)
        for n in (1 << i for i in range(self.dpn.bit_length())):
            if n <= self.dpn and self.est.fits(n, m):
                return n
        raise PlacementError(
            f"LLM {m.name!r} ({m.weight_bytes / 2**30:.1f} GiB of weights, cost key {m.cost_key!r}) "
            f"fits no unit of up to {self.dpn} devices (cost table has "
            f"{self.est.cost.device_counts(m.cost_key)} devices)")

    def unit_estimate(self, n: int, names: tuple[str, ...], mode: str) -> UnitEstimate | None:
        key = (n, names, mode)
        if key not in self._memo:
            specs = tuple(self.llms[x] for x in names)
            self._memo[key] = self.est.estimate(n, specs, tuple(self.rates[x] for x in names), mode)
        return self._memo[key]

    def plan(self, policy: str = "muxserve") -> Placement:
        if policy not in ESTIMATE_MODE:
            raise PlacementError(f"unknown policy {policy!r}; choose muxserve, spatial or temporal")
        if self.units is not None:
            if policy == "spatial":
                raise PlacementError("the spatial policy chooses its own units; it cannot keep fixed ones")
            best = self._greedy(self.units, ESTIMATE_MODE[policy])
            if best is None:
                raise PlacementError(f"the units {self.units} cannot hold all {len(self.llms)} LLMs")
            return self._placement(policy, best[1], ESTIMATE_MODE[policy])
        return max(self.candidates(policy), key=lambda p: p.objective)  # ties: the first candidate

    def candidates(self, policy: str = "muxserve") -> list[Placement]:
        """The placements `plan` chooses among: the policy's search result; for muxserve also the spatial
        and the temporal layouts under MuxServe's scheduling (so it is never worse than either layout)."""
        if policy not in ESTIMATE_MODE:
            raise PlacementError(f"unknown policy {policy!r}; choose muxserve, spatial or temporal")
        found = [spatial_layout(self) if policy == "spatial" else self._search(ESTIMATE_MODE[policy])]
        if policy == "muxserve":
            found += [spatial_layout(self), self._search("temporal")]
        layouts = list(dict.fromkeys(tuple(r[1]) for r in found if r))
        if not layouts:
            raise PlacementError(f"no split of {self.nodes}x{self.dpn} devices holds all "
                                 f"{len(self.llms)} LLMs under policy {policy}")
        return [self._placement(policy, list(layout), ESTIMATE_MODE[policy]) for layout in layouts]

    def _search(self, mode: str) -> tuple[float, Layout] | None:
        need = max(self.min_devices.values())
        best = None
        for split in cluster_splits(self.nodes, self.dpn):
            units = [(node, n) for node, sizes in enumerate(split) for n in sizes]
            if max(n for _, n in units) < need:
                continue
            result = self._greedy(units, mode)
            if result and (best is None or result[0] > best[0]):
                best = result
        return best

    def _greedy(self, units: list[tuple[int, int]], mode: str):
        members: list[tuple[str, ...]] = [() for _ in units]
        order = sorted(self.llms, key=lambda x: (-self.rates[x] * self.llms[x].weight_bytes, x))
        for name in order:
            idx = self._best_unit(units, members, name, mode)
            if idx is None:
                return None
            members[idx] = tuple(sorted((*members[idx], name)))
        layout = [(node, n, m) for (node, n), m in zip(units, members) if m]
        return sum(self.unit_estimate(n, m, mode).served for _, n, m in layout), layout

    def _best_unit(self, units, members, name, mode) -> int | None:
        best_key, best_idx, seen = None, None, set()
        base = self.base[name]
        for idx, ((_, n), mem) in enumerate(zip(units, members)):
            if (n, mem) in seen or any(self.base[x] == base for x in mem):
                continue
            seen.add((n, mem))
            after = self.unit_estimate(n, tuple(sorted((*mem, name))), mode)
            if after is None:
                continue
            before = self.unit_estimate(n, mem, mode).served if mem else 0.0
            key = (round(after.served - before, 9), -n, -len(mem))
            if best_key is None or key > best_key:
                best_key, best_idx = key, idx
        return best_idx

    def rescore(self, placement: Placement) -> Placement:
        """`placement`'s layout (same units, same devices) re-estimated at this planner's rates.

        LLMs no longer configured are dropped; a unit that no longer fits raises PlacementError.
        """
        mode = ESTIMATE_MODE.get(placement.policy, "muxserve")
        layout = []
        for u in placement.units:
            names = tuple(sorted(x for x in u.llm_names if x in self.llms))
            if names and self.unit_estimate(len(u.devices), names, mode) is None:
                raise PlacementError(f"unit {u.unit_id} no longer holds {list(names)}")
            if names:
                layout.append((u.devices[0] // self.dpn, len(u.devices), names, u.devices))
        return self._build(placement.policy, layout, mode)

    def place(self, policy: str, layout: Layout) -> Placement:
        """The Placement of a given layout [(node, size, names)], estimated under `policy`."""
        if policy not in ESTIMATE_MODE:
            raise PlacementError(f"unknown policy {policy!r}; choose muxserve, spatial or temporal")
        for _, n, names in layout:
            if self.unit_estimate(n, tuple(sorted(names)), ESTIMATE_MODE[policy]) is None:
                raise PlacementError(f"a unit of {n} devices cannot hold {list(names)}")
        return self._placement(policy, [(node, n, tuple(sorted(names))) for node, n, names in layout],
                               ESTIMATE_MODE[policy])

    def _placement(self, policy: str, layout: Layout, mode: str) -> Placement:
        placed, next_dev = [], [0] * self.nodes
        for node, n, names in sorted(layout, key=lambda u: (u[0], -u[1], u[2])):
            placed.append((node, n, names, [node * self.dpn + next_dev[node] + i for i in range(n)]))
            next_dev[node] += n
        return self._build(policy, placed, mode)

    def _build(self, policy: str, layout: list, mode: str) -> Placement:
        units = []
        for node, n, names, devices in layout:
            est = self.unit_estimate(n, names, mode)
            llms = [LLMPlacement(self.base.get(e.name, e.name), round(e.prefill_share, 4), round(e.decode_share, 4),
                                 e.rate, round(e.throughput, 6), e.batch) for e in est.llms]
            units.append(Unit(unit_id(devices), devices, llms, "", round(est.served, 6), est.mode))
        objective = round(sum(self.unit_estimate(n, names, mode).served for _, n, names, _ in layout), 6)
        return Placement(policy, objective, units, 0, round(sum(self.rates.values()), 6))
