"""Re-placement as popularity shifts: blend rates, detect sustained drift, switch with hysteresis.

- blended rate = w * observed + (1 - w) * prior, per model (priors alone before any traffic).
- drift = sum |rate - planned rate| / sum planned rates (planned: what the placement assumed).
- A recompute happens when drift stays above the threshold for `sustain_s`; the new placement is
  adopted only if its objective beats the current layout's (re-estimated at the new rates) by
  `min_gain` (relative) AND the gain over `horizon_s` beats the cost of moving: the requests of the
  LLMs that must be loaded somewhere new, delayed `load_time_s` each. After a decision either way
  the drift reference becomes the new rates, so a rejected candidate is not recomputed every tick.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import PlacerConfig
from .placement import Placement, moved_llms


def blend(prior: dict[str, float], observed: dict[str, float], weight: float) -> dict[str, float]:
    """Prior rates blended with observed ones; names not in `prior` are ignored."""
    seen = {m: float(observed.get(m, 0.0)) for m in prior}
    if sum(seen.values()) <= 0:
        return dict(prior)
    return {m: weight * seen[m] + (1 - weight) * prior[m] for m in prior}


def drift(planned: dict[str, float], rates: dict[str, float]) -> float:
    total = sum(planned.values())
    change = sum(abs(rates.get(m, 0.0) - r) for m, r in planned.items())
    return change / total if total > 0 else (float("inf") if change > 0 else 0.0)


@dataclass
class Decision:
    switch: bool
    reason: str


class DriftTracker:
    """observe(rates, now) -> True once drift from the reference rates has lasted sustain_s."""

    def __init__(self, cfg: PlacerConfig, reference: dict[str, float]):
        self.cfg, self.reference = cfg, dict(reference)
        self.since: float | None = None
        self.last = 0.0

    def observe(self, rates: dict[str, float], now: float) -> bool:
        self.last = drift(self.reference, rates)
        if self.last <= self.cfg.drift_threshold:
            self.since = None
            return False
        if self.since is None:
            self.since = now
        return now - self.since >= self.cfg.sustain_s

    def reset(self, reference: dict[str, float]) -> None:
        self.reference, self.since = dict(reference), None


def decide(current: Placement, current_now: float, candidate: Placement, rates: dict[str, float],
           cfg: PlacerConfig) -> Decision:
    """Whether to move from `current` (objective `current_now` at the new rates) to `candidate`."""
    moved = moved_llms(current, candidate)
    gain = candidate.objective - current_now
    cost = sum(rates.get(m, 0.0) for m in moved) * cfg.load_time_s
    facts = (f"objective {current_now:.3f} -> {candidate.objective:.3f} req/s, {len(moved)} LLM(s) to "
             f"load {sorted(moved)}, gain over {cfg.horizon_s:.0f}s {gain * cfg.horizon_s:.1f} req "
             f"vs moving cost {cost:.1f} req")
    if candidate.layout() == current.layout():
        return Decision(True, f"same layout, shares updated for the new rates (nothing moves); {facts}")
    if gain < cfg.min_gain * max(current_now, 1e-9):
        return Decision(False, f"gain below min_gain {cfg.min_gain:.0%}; {facts}")
    if gain * cfg.horizon_s <= cost:
        return Decision(False, f"gain does not pay for moving; {facts}")
    return Decision(True, f"switching; {facts}")
