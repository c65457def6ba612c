"""Cost model: prefill and decode-step latency by model, devices, compute share, batch and context.

Table format (JSON, milliseconds; the A100 reference table and the profiler's output alike):

    model -> number of devices -> share percent -> batch size -> sequence length
          -> {"prefill": ms, "decoding": ms}

prefill: one forward pass over batch x seq prompt tokens. decoding: one decode step for `batch`
sequences whose KV holds `seq` tokens. Entries of -1 (not measured / out of memory) are filled by
linear extrapolation along the batch axis from the measured points.

Lookups interpolate linearly in share, batch and sequence length (trilinear, not a step function)
and extrapolate linearly past the largest batch or sequence measured. Below the smallest measured
share, latency scales as 1/share (work conserved); above 100% it is clamped. The number of devices
is not interpolated: a model runs only on device counts its table measured (`supports`).
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np


class CostModelError(ValueError):
    """The cost table is missing, malformed, or lacks a model; the message names what."""


@dataclass
class _Grid:
    shares: list[float]   # fractions, ascending
    batches: list[int]    # ascending
    seqs: list[int]       # ascending
    prefill: np.ndarray   # [shares, batches, seqs] ms
    decode: np.ndarray    # [shares, batches, seqs] ms

    def __post_init__(self) -> None:
        # nested lists for lookup: indexing a Python list is several times cheaper than a numpy element,
        # and the products and sums below are the same float64 operations either way
        self._lists = {"prefill": self.prefill.tolist(), "decode": self.decode.tolist()}

    def lookup(self, which: str, share: float, batch: float, seq: float) -> float:
        vals = self._lists["prefill" if which == "prefill" else "decode"]
        scale = 1.0
        if share < self.shares[0]:
            scale, share = self.shares[0] / max(share, 1e-3), self.shares[0]
        share = min(share, self.shares[-1])
        out = 0.0
        for i, wi in _axis(self.shares, share):
            for j, wj in _axis(self.batches, batch):
                for k, wk in _axis(self.seqs, seq):
                    out += wi * wj * wk * vals[i][j][k]
        return float(max(out, 1e-3) * scale)


def _axis(xs: list, x: float) -> list[tuple[int, float]]:
    """Linear weights of x on grid xs (extrapolating from the edge segment)."""
    if len(xs) == 1:
        return [(0, 1.0)]
    i = min(max(bisect.bisect_right(xs, x) - 1, 0), len(xs) - 2)
    t = (x - xs[i]) / (xs[i + 1] - xs[i])
    return [(i, 1.0 - t), (i + 1, t)]


def _fill_batch_axis(a: np.ndarray, batches: list[int]) -> None:
    """Fill NaNs along axis 1 in place by linear extrapolation from the measured batches."""
    b = np.asarray(batches, dtype=float)
    for i in range(a.shape[0]):
        for k in range(a.shape[2]):
            col, ok = a[i, :, k], ~np.isnan(a[i, :, k])
            if ok.all() or not ok.any():
                continue
            if ok.sum() == 1:
                j = int(np.flatnonzero(ok)[0])
                col[~ok] = col[j] * b[~ok] / b[j]
                continue
            x, y = b[ok], col[ok]
            slope_hi = (y[-1] - y[-2]) / (x[-1] - x[-2])
            slope_lo = (y[1] - y[0]) / (x[1] - x[0])
            for j in np.flatnonzero(~ok):
                if b[j] > x[-1]:
                    col[j] = y[-1] + slope_hi * (b[j] - x[-1])
                elif b[j] < x[0]:
                    col[j] = max(y[0] + slope_lo * (b[j] - x[0]), 1e-3)
                else:
                    col[j] = np.interp(b[j], x, y)


def _grid(entry: dict, where: str) -> _Grid:
    shares = sorted(entry, key=float)
    batches = sorted({int(b) for s in shares for b in entry[s]})
    seqs = sorted({int(q) for s in shares for b in entry[s] for q in entry[s][b]})
    shape = (len(shares), len(batches), len(seqs))
    pre, dec = np.full(shape, np.nan), np.full(shape, np.nan)
    for i, s in enumerate(shares):
        for b, row in entry[s].items():
            for q, cell in row.items():
                j, k = batches.index(int(b)), seqs.index(int(q))
                p, d = float(cell["prefill"]), float(cell["decoding"])
                pre[i, j, k] = p if p > 0 else np.nan
                dec[i, j, k] = d if d > 0 else np.nan
    for arr in (pre, dec):
        _fill_batch_axis(arr, batches)
        if np.isnan(arr).any():
            raise CostModelError(f"{where}: some (share, sequence) rows have no measured point")
    return _Grid([float(s) / 100 for s in shares], batches, seqs, pre, dec)


class CostTable:
    """Latency lookups over a cost table; `key` is an LLMSpec.cost_key."""

    def __init__(self, data: dict, source: str = "<dict>"):
        if not isinstance(data, dict) or not data:
            raise CostModelError(f"cost table {source}: empty or not a JSON object")
        self.source = source
        self._raw = data
        self._grids: dict[tuple[str, int], _Grid] = {}

    @classmethod
    def load(cls, path: str | Path) -> "CostTable":
        try:
            return cls(json.loads(Path(path).read_text()), str(path))
        except FileNotFoundError:
            raise CostModelError(f"cost table not found: {path}") from None
        except json.JSONDecodeError as e:
            raise CostModelError(f"cost table {path}: invalid JSON ({e})") from None

    def models(self) -> list[str]:
        return sorted(self._raw)

    def has(self, key: str) -> bool:
        return key in self._raw

    def require(self, key: str, llm: str | None = None) -> None:
        """Raise CostModelError naming the model when the table has no entry for `key`."""
        if key not in self._raw:
            who = f"model {llm!r} (cost key {key!r})" if llm and llm != key else f"model {key!r}"
            raise CostModelError(f"cost table {self.source} has no entry for {who}; "
                                 f"it has {self.models()}")

    def device_counts(self, key: str) -> list[int]:
        self.require(key)
        return sorted(int(n) for n in self._raw[key])

    def supports(self, key: str, n_devices: int) -> bool:
        return key in self._raw and str(n_devices) in self._raw[key]

    def max_batch(self, key: str, n: int) -> int:
        """The largest batch measured for `key` on n devices (latency past it is only extrapolated)."""
        return self._grid(key, n).batches[-1]

    def min_share(self, key: str, n: int) -> float:
        """The smallest compute share measured for `key` on n devices (a fraction)."""
        return self._grid(key, n).shares[0]

    def prefill_ms(self, key: str, n: int, share: float, batch: float, seq: float) -> float:
        return self._lookup("prefill", key, n, round(share, 3), batch, seq)

    def decode_ms(self, key: str, n: int, share: float, batch: float, seq: float) -> float:
        return self._lookup("decode", key, n, round(share, 3), batch, seq)

    @lru_cache(maxsize=1 << 18)
    def _lookup(self, which: str, key: str, n: int, share: float, batch: float, seq: float) -> float:
        return self._grid(key, n).lookup(which, share, batch, seq)

    def _grid(self, key: str, n: int) -> _Grid:
        if (key, n) not in self._grids:
            self.require(key)
            if str(n) not in self._raw[key]:
                raise CostModelError(f"cost table {self.source}: model {key!r} has no entry for "
                                     f"{n} devices; it has {self.device_counts(key)}")
            self._grids[key, n] = _grid(self._raw[key][str(n)], f"{self.source}:{key}/{n}")
        return self._grids[key, n]
