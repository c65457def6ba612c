"""Costs without a measured table: prefill and decode-step latency from a checkpoint's numbers and the device's.

`AnalyticCost(shapes, device)` answers the same lookups as costmodel.CostTable (ms, by cost key, devices, share,
batch, length) for the keys in `shapes` (llmspec.ModelShape: parameters, layers, attention width, KV elements per
token); `CostModel(table, analytic)` takes the measured table where it has the key and the estimate elsewhere;
`build_cost(...)` makes one for the placer and logs which models are estimated. `muxserve profile` measures a
table that then replaces the estimate (placer.cost_table).

One step on a unit of n devices at compute share s (devices.DeviceSpec gives bw, flops and the fixed costs):
    decode(b, ctx) = fixed(L, b) + max(bytes / BW, 2 P b / F)
        bytes = (P + b ctx KV) x dtype bytes         (every weight and the batch's past K/V are read once)
    prefill(b, q)  = fixed(L, b q) + max(P x dtype bytes / BW, 2 P b q / F + 4 W L b q^2 / 2 / F_attn)
with P parameters, L layers, W = heads x head_dim, KV = K/V elements per token, plus a per-layer all-reduce cost
when n > 1. GPUs: BW = n bw min(1, 0.45 + 0.9 s) (a fraction of the SMs still draws most of the bandwidth, as
the A100 table shows), F = n flops s. CPU (a device is a core, a share its threads, as `muxserve profile`
measures): t = max(1, round(s n)) threads, BW = min(t bw(bytes / t), bw_all) with bw(size) one thread's bytes/s
for a working set of that size (a small model's weights stay in the caches), F = t flops. How close this comes to the
measured tables: docs/placer.md.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from .costmodel import CostModelError, CostTable
from .devices import DeviceSpec, device_spec
from .llmspec import LLMSpec, ModelShape

log = logging.getLogger(__name__)

MAX_BATCH = 256  # the engine's max_num_seqs default (estimator.MAX_BATCH)
DEVICE_COUNTS = (1, 2, 4, 8)
GPU_MIN_SHARE = 0.3  # the smallest share the A100 table measured; below it MPS shares were not profiled


class AnalyticCost:
    """CostTable's lookups, estimated for the cost keys in `shapes`."""

    def __init__(self, shapes: dict[str, ModelShape], device: DeviceSpec):
        self.shapes, self.device = dict(shapes), device
        self.source = f"analytic ({device.name})"

    def has(self, key: str) -> bool:
        return key in self.shapes

    def models(self) -> list[str]:
        return sorted(self.shapes)

    def require(self, key: str, llm: str | None = None) -> None:
        if key not in self.shapes:
            raise CostModelError(f"no analytic cost for model {llm or key!r} (cost key {key!r})")

    def device_counts(self, key: str) -> list[int]:
        self.require(key)
        return list(DEVICE_COUNTS)

    def supports(self, key: str, n: int) -> bool:
        return key in self.shapes and n in DEVICE_COUNTS

    def max_batch(self, key: str, n: int) -> int:
        return MAX_BATCH

    def min_share(self, key: str, n: int) -> float:
        return GPU_MIN_SHARE if self.device.kind == "cuda" else min(0.5, 1 / n)

    def prefill_ms(self, key: str, n: int, share: float, batch: float, seq: float) -> float:
        return self._step("prefill", key, n, round(share, 3), float(batch), float(seq))

    def decode_ms(self, key: str, n: int, share: float, batch: float, seq: float) -> float:
        return self._step("decode", key, n, round(share, 3), float(batch), float(seq))

    def _rates(self, n: int, share: float, nbytes: float) -> tuple[float, float, float]:
        """(bytes/s reading `nbytes`, dense FLOP/s, attention FLOP/s) of n devices at `share`."""
        d = self.device
        if d.kind == "cuda":
            frac = max(share, 1e-3)
            return n * d.bw * min(1.0, 0.45 + 0.9 * frac), n * d.flops * frac, n * d.attn_flops * frac
        threads = max(1, round(share * n))
        one = d.bandwidth(nbytes / threads)  # each thread reads its part: a small model's stays in the caches
        return max(min(threads * one, d.bw_all), one), threads * d.flops, threads * d.attn_flops

    @lru_cache(maxsize=1 << 16)
    def _step(self, which: str, key: str, n: int, share: float, batch: float, seq: float) -> float:
        self.require(key)
        m, d = self.shapes[key], self.device
        read = (m.params + batch * seq * m.kv_per_token) * d.dtype_bytes  # weights + past K/V (prefill: ~none)
        bw, fl, afl = self._rates(n, share, read)
        tp = d.tp_layer_ms * m.num_layers if n > 1 else 0.0
        if which == "decode":
            work = 2 * m.params * batch / fl  # attention over the past K/V: reading them (in `read`) bounds it
            return d.decode.ms(m.num_layers, batch) + tp + 1e3 * max(read / bw, work)
        tokens = batch * seq
        work = 2 * m.params * tokens / fl + 2 * m.attn_width * m.num_layers * batch * seq * seq / afl
        return d.prefill.ms(m.num_layers, tokens) + tp + 1e3 * max(m.params * d.dtype_bytes / bw, work)


class CostModel:
    """The measured table where it has a model's cost key, the analytic estimate otherwise (same lookups)."""

    def __init__(self, table: CostTable, analytic: AnalyticCost | None = None):
        self.table, self.analytic = table, analytic
        self.source = table.source + (f" + {analytic.source}" if analytic else "")

    def _of(self, key: str):
        if self.analytic is not None and not self.table.has(key) and self.analytic.has(key):
            return self.analytic
        return self.table

    def models(self) -> list[str]:
        return sorted(set(self.table.models()) | set(self.analytic.models() if self.analytic else ()))

    def require(self, key: str, llm: str | None = None) -> None:
        self._of(key).require(key, llm)

    def device_counts(self, key: str) -> list[int]:
        return self._of(key).device_counts(key)

    def supports(self, key: str, n: int) -> bool:
        return self._of(key).supports(key, n)

    def max_batch(self, key: str, n: int) -> int:
        return self._of(key).max_batch(key, n)

    def min_share(self, key: str, n: int) -> float:
        return self._of(key).min_share(key, n)

    def prefill_ms(self, key: str, n: int, share: float, batch: float, seq: float) -> float:
        return self._of(key).prefill_ms(key, n, share, batch, seq)

    def decode_ms(self, key: str, n: int, share: float, batch: float, seq: float) -> float:
        return self._of(key).decode_ms(key, n, share, batch, seq)


def build_cost(table: CostTable, specs: list[LLMSpec], device_kind: str, gpu: str = "auto",
               cache_dir=None) -> CostModel:
    """`table`, plus analytic costs for the specs whose cost key it lacks (each logged as an estimate)."""
    missing = {m.cost_key: m for m in specs if not table.has(m.cost_key)}
    if not missing:
        return CostModel(table)
    if any(m.shape is None for m in missing.values()):
        bad = sorted(m.name for m in missing.values() if m.shape is None)
        raise CostModelError(f"cost table {table.source} has no entry for {bad} and their shapes are unknown")
    device = device_spec(device_kind, gpu, cache_dir)
    for m in missing.values():
        s = m.shape
        log.warning("model %r (cost key %r) is not in the cost table %s: its costs are an ANALYTIC estimate from "
                    "the checkpoint (%.3g parameters, %d layers, %d KV elements per token) and the device (%s: %s); "
                    "`muxserve profile` measures a table for it (placer.cost_table)", m.name, m.cost_key,
                    table.source, s.params, s.num_layers, s.kv_per_token, device.name, device.source)
    return CostModel(table, AnalyticCost({k: m.shape for k, m in missing.items()}, device))
