"""MuxServe's unit-throughput estimate: how many req/s a unit serves for the LLMs placed on it.

Model (per unit of n devices, all of its LLMs tensor-parallel over all n):
- Memory: capacity = n x device bytes x utilization; weights of every LLM must fit; the rest is
  the KV pool, split among the LLMs in proportion to rate x KV-bytes-per-token after reserving one
  full-length sequence (prompt + output) each. An LLM's batch is capped by its share of the pool,
  by the largest batch its cost table measured and by the engine's max_num_seqs (`max_batch`).
- Prefill: a request's prompt is prefilled in batches under the token budget, at the prefill share;
  prefill runs first (ADBS holds decode back), so it occupies the whole unit: the fraction of time
  the unit spends in prefill is rho = sum_j x_j * prefill_j.
- spatial-temporal (MuxServe): decode jobs of all LLMs run at once, each on its decode share
  (shares sum to <= 1). LLM i serves x_i = min(rate_i, (1 - rho) * b_i / (decode_step_i(b_i, d_i)
  * output_len)). Its decode share is the smallest that meets its rate at its largest batch, but
  never below the smallest share the cost table measured (below it the table only extrapolates
  latency as 1/share: a 5% decode share would "serve" a cold LLM at 6x the latency); shares are
  scaled down together when they do not fit in 100%; its batch is then the smallest that meets the rate.
- spatial-temporal with prefill beside decode (GPU units: MPS shares that cannot spread): with a prefill share p
  such that p + sum_i d_i <= 1 + overload allowance, the engine admits a prefill while every decode job runs,
  so decode is never held back and LLM i serves min(rate_i, b_i / (decode_step_i(b_i, d_i) * output_len)); the
  unit's prefills (at share p, one at a time) must fit: sum_j x_j * prefill_j(p) <= MAX_RHO. The decode shares
  are the smallest that meet the rates, scaled up to use what p leaves (a decode job cannot use compute it was
  not given). Every p on the share grid is a candidate beside the held-back layout above; the unit keeps the
  one that serves the most and, among those that serve as much, the one with the most headroom: the least,
  over its LLMs and its prefill, of capacity at the largest batch over the rate (a layout that only just
  serves its rate queues at the first burst).
- temporal: one job at a time on the whole unit (FCFS), so LLM i needs c_i = decode_step_i(b_i, 1)
  * output_len / b_i + prefill_i seconds of exclusive unit time per request; with load
  L = sum_i rate_i * c_i, each LLM gets x_i = rate_i / max(1, L).
MuxServe's estimate of a unit is the better of its two modes (a unit may fall back to temporal), except on
work-conserving units (CPU process jobs: a dispatch gets every core the others leave free, compute.py
`spread`), where spatial-temporal serves at least what temporal does; there the unit keeps MuxServe's mode and
shares (each decode job keeps its cores beside the others') with the temporal estimate's throughput.
Throughputs are capped at the rate: a unit's `served` is what it serves of its demand, in req/s.
Host work (CPU units, `host_cpu_s_per_token` h > 0): the mesh's own processes spend h CPU seconds per streamed
token on the unit's cores, so a unit streaming T tokens/s keeps n - h T of its n cores for its jobs; the
served rates are scaled by f = min(1, c s) / min(1, c), c the headroom (capacity / rate), s = 1 - h T f / n
(T at f = 1), solved in closed form.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .config import Workload
from .costmodel import CostTable  # or analytic.CostModel: the same lookups
from .llmspec import LLMSpec

SHARES = tuple(round(0.05 * i, 2) for i in range(1, 21))  # decode share grid, 5% steps
MAX_RHO = 0.95
MAX_BATCH = 256  # the engine's max_num_seqs default: no LLM runs a larger decode batch
PREFILL_SLACK = 1.1  # prefill share: the smallest within 10% of full-unit prefill latency


@dataclass
class LLMEstimate:
    name: str
    rate: float
    batch: int
    prefill_share: float
    decode_share: float
    throughput: float  # req/s served, <= rate


@dataclass
class UnitEstimate:
    n_devices: int
    mode: str  # "spatial-temporal" | "temporal"
    llms: list[LLMEstimate]
    headroom: float = 0.0  # least capacity / rate over the LLMs' decode and the unit's prefill (module docstring)

    @property
    def served(self) -> float:
        return sum(e.throughput for e in self.llms)


class UnitEstimator:
    """estimate(n, llms, rates, mode) -> UnitEstimate, or None when the LLMs do not fit the unit."""

    def __init__(self, cost: CostTable, workload: Workload, device_bytes: float, mem_util: float = 0.9,
                 max_batch: int = MAX_BATCH, work_conserving: bool = False, overload_allowance: float = 0.2,
                 host_cpu_s_per_token: float = 0.0):
        self.cost, self.w = cost, workload
        self.work_conserving = work_conserving
        self.host = host_cpu_s_per_token  # CPU units: the mesh's CPU seconds per streamed token (docstring)
        self.allowance = overload_allowance  # the engine's: admitted shares may add up to 1 + this
        self.capacity_per_device = device_bytes * mem_util
        self.max_batch = max_batch

    def estimate(self, n: int, llms: tuple[LLMSpec, ...], rates: tuple[float, ...],
                 mode: str = "muxserve") -> UnitEstimate | None:
        """mode: "muxserve" (best of both), "spatial-temporal", "temporal" or "spatial" (= s-t)."""
        e = self._estimate(n, llms, rates, mode)
        return e if e is None or self.host <= 0 else self._with_host(e)

    def _with_host(self, e: UnitEstimate) -> UnitEstimate:
        """The estimate with the host's share of the unit's cores taken out (module docstring)."""
        a = self.host * sum(x.throughput for x in e.llms) * self.w.output_len / e.n_devices  # cores lost at f = 1
        c = max(e.headroom, 1e-9)  # capacity / rate without host work
        f = min(1.0, c / (1 + a * c)) if c >= 1 else 1 / (1 + a)  # f = min(1, c s) / min(1, c), s = 1 - a f
        return replace(e, llms=[replace(x, throughput=x.throughput * f) for x in e.llms], headroom=e.headroom * f)

    def _estimate(self, n, llms, rates, mode) -> UnitEstimate | None:
        bmax = self.max_batches(n, llms, rates)
        if bmax is None:
            return None
        if mode == "temporal":
            return self._temporal(n, llms, rates, bmax)
        st = self._spatial_temporal(n, llms, rates, bmax)
        if mode in ("spatial", "spatial-temporal") or len(llms) == 1:
            return st
        tm = self._temporal(n, llms, rates, bmax)
        if tm.served <= st.served + 1e-9:
            return st
        if not self.work_conserving:
            return tm
        return UnitEstimate(n, "spatial-temporal", [replace(e, throughput=t.throughput)
                                                    for e, t in zip(st.llms, tm.llms)], tm.headroom)

    def fits(self, n: int, llm: LLMSpec) -> bool:
        """Whether `llm` alone fits a unit of n devices (cost table and memory)."""
        return self.max_batches(n, (llm,), (llm.rate,)) is not None

    def max_batches(self, n: int, llms, rates) -> list[int] | None:
        """Each LLM's largest batch from its KV quota, or None when weights + one sequence each do not fit."""
        if any(not self.cost.supports(m.cost_key, n) for m in llms):
            return None
        ctx = self.w.prompt_len + self.w.output_len
        kv = n * self.capacity_per_device - sum(m.weight_bytes for m in llms)
        rest = kv - sum(m.kv_bytes_per_token * ctx for m in llms)
        if rest < 0:
            return None
        weights = [max(r, 1e-6) * m.kv_bytes_per_token for m, r in zip(llms, rates)]
        total = sum(weights)
        out = []
        for m, wt in zip(llms, weights):
            extra = int(rest * wt / total // (m.kv_bytes_per_token * ctx))
            out.append(min(1 + extra, self.cost.max_batch(m.cost_key, n), self.max_batch))
        return out

    def _prefill(self, n: int, m: LLMSpec, bmax: int) -> tuple[float, float]:
        """(prefill share, seconds of prefill per request)."""
        full = self._prefill_at(n, m, bmax, 1.0)
        share = next(s for s in self._shares(n, m) if self._prefill_at(n, m, bmax, s) <= PREFILL_SLACK * full)
        return share, self._prefill_at(n, m, bmax, share)

    def _prefill_at(self, n: int, m: LLMSpec, bmax: int, share: float) -> float:
        """Seconds of prefill per request at `share`, prompts batched under the token budget."""
        p = self.w.prompt_len
        c = max(1, min(bmax, self.w.prefill_token_budget // p))
        return self.cost.prefill_ms(m.cost_key, n, share, c, p) / 1000 / c

    def _capacity(self, n: int, m: LLMSpec, b: int, share: float) -> float:
        """Decode-limited req/s of LLM m at batch b and decode share `share`."""
        ctx = self.w.prompt_len + self.w.output_len / 2
        return b / (self.cost.decode_ms(m.cost_key, n, share, b, ctx) / 1000 * self.w.output_len)

    def _spatial_temporal(self, n, llms, rates, bmax) -> UnitEstimate:
        best = self._held_back(n, llms, rates, bmax)
        if self.work_conserving:  # CPU cores spread to whatever job runs: the held-back estimate stands
            return best
        need = [self._min_share(n, m, b, r) for m, b, r in zip(llms, bmax, rates)]  # decode, never held back
        for p in SHARES:
            e = self._beside(n, llms, rates, bmax, p, need)
            if e is not None and (e.served > best.served + 1e-6 or
                                  (e.served > best.served - 1e-6 and e.headroom > best.headroom)):
                best = e
        return best

    def _held_back(self, n, llms, rates, bmax) -> UnitEstimate:
        """Prefill at the share PREFILL_SLACK allows, decode held back while it runs (module docstring)."""
        pre = [self._prefill(n, m, b) for m, b in zip(llms, bmax)]
        rho = min(sum(r * p[1] for r, p in zip(rates, pre)), MAX_RHO)
        need = [r / (1 - rho) for r in rates]
        shares = [self._min_share(n, m, b, d) for m, b, d in zip(llms, bmax, need)]
        if sum(shares) > 1:
            shares = [s / sum(shares) for s in shares]
        batches = [self._min_batch(n, m, b, s, d) for m, b, s, d in zip(llms, bmax, shares, need)]
        caps = [self._capacity(n, m, b, s) for m, b, s in zip(llms, batches, shares)]
        served = _fixed_point(rates, caps, [p[1] for p in pre])
        ests = [LLMEstimate(m.name, r, b, max(p[0], s), s, x)
                for m, r, b, p, s, x in zip(llms, rates, batches, pre, shares, served)]
        load = sum(x * p[1] for x, p in zip(served, pre))
        room = [(1 - load) * self._capacity(n, m, b, s) / max(r, 1e-9) for m, b, s, r in zip(llms, bmax, shares, rates)]
        return UnitEstimate(n, "spatial-temporal", ests, min(room + [MAX_RHO / max(load, 1e-9)]))

    def _beside(self, n, llms, rates, bmax, p: float, need: list[float]) -> UnitEstimate | None:
        """Prefill at share p beside every decode job (module docstring), or None where p leaves the decode
        jobs less than the shares they need (`need`) or is below a table's smallest measured share."""
        room = min(1.0, 1 + self.allowance - p)
        if room <= 0 or sum(need) > room + 1e-9 or any(p < self.cost.min_share(m.cost_key, n) - 1e-9 for m in llms):
            return None
        shares = [s * room / sum(need) for s in need]  # what p leaves, to the decode jobs
        batches = [self._min_batch(n, m, b, s, r) for m, b, s, r in zip(llms, bmax, shares, rates)]
        served = [min(r, self._capacity(n, m, b, s)) for m, b, s, r in zip(llms, batches, shares, rates)]
        pre = [self._prefill_at(n, m, b, p) for m, b in zip(llms, bmax)]
        load = sum(x * t for x, t in zip(served, pre))
        if load > MAX_RHO:
            served = [x * MAX_RHO / load for x in served]
        ests = [LLMEstimate(m.name, r, b, p, s, x) for m, r, b, s, x in zip(llms, rates, batches, shares, served)]
        room_llm = [self._capacity(n, m, b, s) / max(r, 1e-9) for m, b, s, r in zip(llms, bmax, shares, rates)]
        return UnitEstimate(n, "spatial-temporal", ests, min(room_llm + [MAX_RHO / max(load, 1e-9)]))

    def _min_share(self, n, m, bmax, need) -> float:
        return next((s for s in self._shares(n, m) if self._capacity(n, m, bmax, s) >= need), 1.0)

    def _shares(self, n: int, m: LLMSpec) -> list[float]:
        """The share grid from the smallest share the table measured (below it latency is extrapolated)."""
        low = self.cost.min_share(m.cost_key, n)
        return [s for s in SHARES if s >= low - 1e-9] or [1.0]

    def _min_batch(self, n, m, bmax, share, need) -> int:
        lo, hi = 1, bmax
        while lo < hi:
            mid = (lo + hi) // 2
            if self._capacity(n, m, mid, share) >= need:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _temporal(self, n, llms, rates, bmax) -> UnitEstimate:
        pre = [self._prefill(n, m, b)[1] for m, b in zip(llms, bmax)]
        per_req = [1 / self._capacity(n, m, b, 1.0) + p for m, b, p in zip(llms, bmax, pre)]
        need = sum(r * c for r, c in zip(rates, per_req))  # seconds of exclusive unit time per second
        load = max(1.0, need)
        ests = [LLMEstimate(m.name, r, b, 1.0, 1.0, r / load) for m, r, b in zip(llms, rates, bmax)]
        return UnitEstimate(n, "temporal", ests, 1 / max(need, 1e-9))


def _fixed_point(rates, caps, pre, iters: int = 60) -> list[float]:
    """x_i = min(rate_i, (1 - rho) * cap_i) with rho = sum_j x_j * pre_j (rho <= MAX_RHO).

    g(rho) = sum_j min(rate_j, (1 - rho) cap_j) pre_j - rho falls as rho rises, so its root is found by
    bisection (plain iteration from x = rates oscillates when prefill dominates, and stopped on the
    optimistic side)."""
    def served(rho):
        return [min(r, (1 - rho) * c) for r, c in zip(rates, caps)]

    lo, hi = 0.0, MAX_RHO
    if sum(a * p for a, p in zip(served(hi), pre)) >= hi:
        return served(hi)
    for _ in range(iters):
        mid = (lo + hi) / 2
        if sum(a * p for a, p in zip(served(mid), pre)) > mid:
            lo = mid
        else:
            hi = mid
    return served(hi)
