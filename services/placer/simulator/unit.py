"""One unit on a virtual clock: the engine's own Scheduler, BlockManager and ComputeBudget (not copies),
with each dispatch lasting what the cost table says instead of running a model.

A dispatch's duration is the cost table's latency for its LLM on the unit's device count at the
share it runs with: the job's compute share on GPU (its MPS percentage; 1.0 without a share), the
cores the budget gave it over the unit's cores on CPU (one dispatch per core, free cores spread, as
compute.py does). A prefill dispatch (recompute after preemption included) looks up (batch =
sequences, seq = mean tokens computed); a decode dispatch (batch, seq = mean context). Each dispatch
also costs `dispatch_overhead_s`, and each sampled token `token_overhead_s` (what the engine, its job
pipes and the mesh spend beside the forward pass; 0 for the A100 table, whose entries were measured
around the whole step). On CPU, `host_cpu_s_per_token` is the CPU time the mesh's own processes (router,
worker loop, job pipes, a local client) spend per streamed token on the cores the jobs run on: a dispatch
of c cores sampling s tokens while a fraction f of the host's cores is busy lasts h x s x f / c longer (its
tokens' host work lands on its own cores when no core is idle, on the idle ones when they are). The host is
every unit in `peers` (Simulation sets all of a CPU placement's units: one machine, as the CPU mesh runs).

KV: the unit's pool (devices x device bytes x memory utilization - weights) in coarse blocks of
`sim_block_bytes`; a token block of an LLM costs ceil(KV bytes per token x block_size / sim_block_bytes)
of them. Quotas start in proportion to rate x per-token KV (quotas.initial_quotas) and adapt by
memmgr's ADBS rule (quotas.adapt; `adapt_quotas`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from services.memmgr import quotas
from services.placer.costmodel import CostTable
from services.placer.placement import Unit
from services.worker.engine.block_manager import BlockManager
from services.worker.engine.compute import ComputeBudget
from services.worker.engine.config import EngineConfig
from services.worker.engine.pool import LocalBlockSource
from services.worker.engine.scheduler import Dispatch, Scheduler
from services.worker.engine.sequence import Sequence
from services.worker.engine.unit_compute import job_homes

_ENGINE = EngineConfig()


@dataclass(frozen=True)
class SimConfig:
    """What the simulated units run with (engine defaults unless set)."""

    device: str = "cuda"  # "cuda": shares are MPS percentages; "cpu": a device is a core
    device_bytes: float = 80 * 2**30  # bytes per device (80 GiB: the placer's device_memory_gb default)
    memory_utilization: float = 0.9
    block_size: int = _ENGINE.block_size
    max_num_seqs: int = _ENGINE.max_num_seqs
    max_prefill_tokens: int = _ENGINE.max_prefill_tokens
    overload_allowance: float = _ENGINE.overload_allowance
    spread_cores: bool = _ENGINE.spread_cores
    decode_deadline_scale: float = _ENGINE.decode_deadline_scale
    quota: quotas.QuotaPolicy = field(default_factory=quotas.QuotaPolicy)
    dispatch_overhead_s: float = 0.0
    token_overhead_s: float = 0.0
    host_cpu_s_per_token: float = 0.0  # CPU units: the mesh's CPU per streamed token on the jobs' cores
    sim_block_bytes: int = 1 << 20
    num_blocks: int = 0  # blocks of each unit's pool (0: from the memory model); the CPU mesh sets it


@dataclass(frozen=True)
class SimLLM:
    """What the simulator needs of one LLM (from the placer's LLMSpec)."""

    name: str
    cost_key: str
    weight_bytes: int
    kv_bytes_per_token: int
    rate: float


class SimUnit:
    def __init__(self, unit: Unit, llms: dict[str, SimLLM], cost: CostTable, cfg: SimConfig):
        self.unit, self.cost, self.cfg = unit, cost, cfg
        self.n = len(unit.devices)
        self.llms = {m.name: llms[m.name] for m in unit.llms}
        capacity = cfg.num_blocks or self._capacity()
        self.blocks = BlockManager(LocalBlockSource(capacity), capacity, cfg.block_size)
        self.per_token = {m.name: self._per_token_block(m) for m in self.llms.values()}
        for name, per_token in self.per_token.items():
            self.blocks.add_llm(name, 1, per_token)
        self.blocks.set_quotas(quotas.initial_quotas(
            capacity, {n: m.rate for n, m in self.llms.items()}, self.per_token))
        self.scheduler = Scheduler(self.blocks, cfg.max_num_seqs, cfg.max_prefill_tokens, unit.mode,
                                   cfg.decode_deadline_scale)
        self.now = 0.0  # the virtual clock, set by the loop before each call
        self.scheduler.order.clock = lambda: self.now
        self.num_finished = 0  # sequences this unit completed
        self.peers: list[SimUnit] = [self]  # the units whose cores the host's processes share (module docstring)
        for name in self.llms:
            self.scheduler.add_llm(name)
        shares = {f"{m.name}/{k}": s for m in unit.llms
                  for k, s in (("prefill", m.prefill_share), ("decode", m.decode_share)) if s > 0}
        cores = list(range(self.n)) if cfg.device == "cpu" else None
        self.budget = ComputeBudget(shares, cfg.overload_allowance, cores, cfg.spread_cores)
        if cores:  # each job's home cores, as the engine's UnitCompute.plan divides them
            homes = job_homes(shares, [m.name for m in unit.llms], cores)
            self.budget.home = {job: share.cores for job, share in homes.items()}

    def _capacity(self) -> int:
        free = self.n * self.cfg.device_bytes * self.cfg.memory_utilization
        free -= sum(m.weight_bytes for m in self.llms.values())
        if free <= 0:
            raise ValueError(f"unit {self.unit.unit_id}: the weights of {sorted(self.llms)} do not fit")
        return int(free // self.cfg.sim_block_bytes)

    def _per_token_block(self, m: SimLLM) -> int:
        return max(1, math.ceil(m.kv_bytes_per_token * self.cfg.block_size / self.cfg.sim_block_bytes))

    # ---- the loop's three calls ---------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        self.scheduler.add(seq)

    def dispatch(self, now: float) -> list[tuple[float, Dispatch]]:
        """Plan every idle job's next batch at time `now`: [(duration in s, dispatch)]."""
        self.now = now
        out = self.scheduler.schedule(self.budget.busy, self.budget)
        return [(self.duration(d), d) for d in out]

    def complete(self, d: Dispatch, now: float) -> list[Sequence]:
        """Apply a returned dispatch at time `now`; returns the sequences that finished (their
        first_token_time is set when they sampled their first token)."""
        self.now = now
        self.budget.give(d.llm, d.kind)
        for seq in self.scheduler.complete(d, [0] * len(d.plan)):
            if not seq.first_token_time:
                seq.first_token_time = now
            if len(seq.output_token_ids) >= seq.sampling.max_tokens:
                self.scheduler.finish(seq, "length")
        finished = list(self.scheduler.finished)
        self.scheduler.finished.clear()
        self.num_finished += len(finished)
        return finished

    # ---- durations ----------------------------------------------------------------------------
    def share_of(self, d: Dispatch) -> float:
        cores = self.budget.cores_of(d.llm, d.kind)
        if cores is not None:
            return len(cores) / self.n
        return self.budget.share(d.llm, d.kind) or 1.0

    def duration(self, d: Dispatch) -> float:
        key, share, batch = self.llms[d.llm].cost_key, self.share_of(d), len(d.plan)
        if d.kind == "prefill":
            ms = self.cost.prefill_ms(key, self.n, share, batch, sum(d.plan.values()) / batch)
            sampled = sum(s.num_computed_tokens + n == s.num_tokens for s, n in d.plan.items())
        else:  # decode: every sequence computes its last token and samples the next
            ms = self.cost.decode_ms(key, self.n, share, batch, sum(s.num_computed_tokens for s in d.plan) / batch + 1)
            sampled = batch
        return ms / 1000 + self.cfg.dispatch_overhead_s + self.cfg.token_overhead_s * sampled + self._host(d, sampled)

    def _host(self, d: Dispatch, sampled: int) -> float:
        """Seconds the mesh's host work for `sampled` tokens adds to dispatch d (CPU units; module docstring)."""
        cores = self.budget.cores_of(d.llm, d.kind)
        if not cores or not self.cfg.host_cpu_s_per_token:
            return 0.0
        busy = 1 - sum(len(u.budget.free_cores()) for u in self.peers) / sum(u.n for u in self.peers)
        return self.cfg.host_cpu_s_per_token * sampled * busy / len(cores)

    # ---- ADBS ---------------------------------------------------------------------------------
    def adapt_quotas(self) -> None:
        """One ADBS round as memmgr runs it: saturated = waiting requests and usage >= threshold x quota."""
        if len(self.llms) < 2:
            return
        q, used = self.blocks.quotas, self.blocks.usage
        saturated = {n for n in self.llms if self.scheduler.waiting[n]
                     and used[n] >= self.cfg.quota.threshold * q[n]}
        weights = {n: m.rate * self.per_token[n] for n, m in self.llms.items()}
        self.blocks.set_quotas(quotas.adapt(q, used, saturated, weights, self.cfg.quota))
