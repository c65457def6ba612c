"""The placer's domain object: plans, publishes, re-plans, and assigns units to workers.

No protobuf here (servicer.py converts). Planning is CPU work, so it runs in a thread
(`asyncio.to_thread`), never on the event loop. Every published placement goes to Redis (store.py)
and to the in-process feed that WatchPlacement streams read.
"""

from __future__ import annotations

import asyncio
import logging
import time

from muxserve.popularity import PopularityStore

from .config import PlacerConfig
from .costmodel import CostTable
from .estimator import UnitEstimator
from .llmspec import LLMSpec
from .placement import Placement
from .replacement import DriftTracker, blend, decide
from .search import PlacementError, Planner
from .store import PlacementFeed, PlacementStore
from .workers import WorkerRegistry

log = logging.getLogger(__name__)


def make_planner(specs: list[LLMSpec], rates: dict[str, float], nodes: int, devices_per_node: int,
                 cfg: PlacerConfig, cost: CostTable, units: list[tuple[int, int]] | None = None) -> Planner:
    est = UnitEstimator(cost, cfg.workload, cfg.device_memory_gb * 2**30, cfg.memory_utilization,
                        work_conserving=cfg.device == "cpu", overload_allowance=cfg.overload_allowance,
                        host_cpu_s_per_token=cfg.host_cpu_ms_per_token / 1000 if cfg.device == "cpu" else 0.0)
    return Planner(specs, rates, nodes, devices_per_node, est, units, cfg.max_replicas)


class PlacerService:
    def __init__(self, cfg: PlacerConfig, specs: list[LLMSpec], nodes: int, devices_per_node: int,
                 store: PlacementStore, popularity: PopularityStore, cost: CostTable,
                 failed: dict[str, str] | None = None):
        self.cfg, self.specs, self.cost = cfg, specs, cost
        self.left_out = dict(failed or {})  # configured models whose checkpoint cannot be read -> why
        self.nodes, self.dpn = nodes, devices_per_node
        self.store, self.popularity = store, popularity
        self.feed = PlacementFeed(store)
        self.workers = WorkerRegistry(cfg.worker_ttl_s)
        self.prior = {m.name: m.rate for m in specs}
        self.current: Placement | None = None
        self.tracker = DriftTracker(cfg, self.prior)
        self._lock = asyncio.Lock()

    def plan(self, rates: dict[str, float]) -> Placement:
        return make_planner(self.specs, rates, self.nodes, self.dpn, self.cfg, self.cost).plan(self.cfg.policy)

    async def start(self) -> Placement:
        """Adopt the stored placement if it places exactly our LLMs, else plan from the rates; publish."""
        await self.feed.start()
        stored = await self.store.get()
        rates = await self.rates()
        if stored is not None and stored.placed() == set(self.prior) and stored.policy == self.cfg.policy:
            log.info("adopting stored placement v%d", stored.version)
            self.current = stored
        else:
            self.current = await asyncio.to_thread(self.plan, rates)
            await self._publish(f"initial placement ({self.cfg.policy})")
        self.tracker.reset({u.name: u.rate for x in self.current.units for u in x.llms})
        return self.current

    async def close(self) -> None:
        await self.feed.close()

    async def rates(self, now: float | None = None) -> dict[str, float]:
        """Prior rates blended with those observed in Redis over the window (unknown names ignored)."""
        observed = await self.popularity.rates(list(self.prior), self.cfg.window_s, now)
        return blend(self.prior, observed, self.cfg.observed_weight)

    async def tick(self, now: float | None = None) -> bool:
        """One re-placement check; True when a new version was published."""
        now = time.time() if now is None else now
        async with self._lock:
            published = False
            if self.workers.expire(now):
                published |= await self._reassign("worker(s) expired")
            rates = await self.rates(now)
            if not self.tracker.observe(rates, now):
                return published
            log.info("rates drifted %.2f (> %.2f) for >= %.1fs: recomputing", self.tracker.last,
                     self.cfg.drift_threshold, self.cfg.sustain_s)
            candidate, now_score = await asyncio.to_thread(self._candidate, rates)
            decision = decide(self.current, now_score, candidate, rates, self.cfg)
            log.info("re-placement: %s", decision.reason)
            self.tracker.reset(rates)
            if decision.switch:
                self.current = candidate
                await self._publish(decision.reason)
                return True
            return published

    def _candidate(self, rates: dict[str, float]) -> tuple[Placement, float]:
        """The best placement at `rates`, and the current one's objective at them.

        While workers hold the current units, the candidate keeps those units (their devices and
        sizes) and only moves LLMs between them: a worker owns its unit's devices, and a new split
        would leave units no running worker can take. Without workers, the whole search runs.
        """
        planner = make_planner(self.specs, rates, self.nodes, self.dpn, self.cfg, self.cost)
        held = [(u.devices[0] // self.dpn, len(u.devices)) for u in self.current.units if u.worker_address]
        candidate = None
        if held and len(held) == len(self.current.units):
            try:
                candidate = make_planner(self.specs, rates, self.nodes, self.dpn, self.cfg, self.cost,
                                         held).plan(self.cfg.policy)
            except PlacementError as exc:
                log.info("re-placement within the workers' units failed (%s): searching every split", exc)
        return candidate or planner.plan(self.cfg.policy), planner.rescore(self.current).objective

    async def register(self, worker_id: str, address: str, num_devices: int,
                       failed: dict[str, str] | None = None) -> tuple[str, int]:
        """(unit id or "", placement version) for the worker; publishes if assignments changed. `failed`:
        models of its unit that failed to load there -> why (logged once per new reason)."""
        async with self._lock:
            w = self.workers.register(worker_id, address, num_devices, time.time())
            for name, why in sorted((failed or {}).items()):
                if w.failed.get(name) != why:
                    log.error("worker %s (unit %s) could not load model %r: %s", worker_id, w.unit_id or "-",
                              name, why)
            w.failed = dict(failed or {})
            if self.current is not None:
                await self._reassign(f"worker {worker_id} registered")
            return w.unit_id, self.current.version if self.current else 0

    async def _reassign(self, why: str) -> bool:
        if self.current is None or not self.workers.assign(self.current):
            return False
        await self._publish(f"unit assignment changed: {why}")
        return True

    async def _publish(self, why: str) -> None:
        self.workers.assign(self.current)
        self.current.failed_models = dict(self.left_out)  # the routers answer their requests with the reason
        version = await self.store.publish(self.current)
        await self.feed.offer(Placement.from_dict(self.current.to_dict()))
        log.info("published placement v%d (objective %.3f req/s, %d units): %s", version,
                 self.current.objective, len(self.current.units), why)
