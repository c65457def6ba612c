"""Admission by compute share (MuxServe's compute units) for the jobs of one unit.

A unit has 1.0 of compute. Each job ("<llm>/prefill", "<llm>/decode") has a share in (0, 1]; a job may
start a dispatch when its share fits what the unit has free plus `allowance` (MuxServe allowed 20%
overload). A job without a share is always admitted (it shares the unit's cores or GPU with the
others, time-sliced by the OS or the driver). What a dispatch took is what returns when it ends, so a
change of shares (`set_shares`) takes effect at the next dispatch and never fails one in flight.
"""

from __future__ import annotations

EPS = 1e-9


class ComputeBudget:
    def __init__(self, shares: dict[str, float] | None = None, allowance: float = 0.2):
        if allowance < 0:
            raise ValueError(f"overload allowance must be >= 0, got {allowance}")
        self.allowance = allowance
        self.shares: dict[str, float] = {}
        self._taken: dict[tuple[str, str], float] = {}
        self.set_shares(shares or {})

    def set_shares(self, shares: dict[str, float]) -> None:
        """shares: {"<llm>/<kind>": fraction in (0, 1]}; jobs not named are unconstrained."""
        for job, share in shares.items():
            if not 0 < float(share) <= 1:
                raise ValueError(f"compute share of {job!r} must be in (0, 1], got {share}")
        self.shares = {job: float(s) for job, s in shares.items()}

    def share(self, llm: str, kind: str) -> float:
        return self.shares.get(f"{llm}/{kind}", 0.0)

    @property
    def used(self) -> float:
        return sum(self._taken.values())

    def fits(self, llm: str, kind: str) -> bool:
        return self.used + self.share(llm, kind) <= 1.0 + self.allowance + EPS

    def take(self, llm: str, kind: str) -> None:
        if (llm, kind) in self._taken:
            raise RuntimeError(f"job {llm}/{kind} already has a dispatch in flight")
        self._taken[(llm, kind)] = self.share(llm, kind)

    def give(self, llm: str, kind: str) -> None:
        self._taken.pop((llm, kind), None)

    @property
    def busy(self) -> frozenset:
        """(llm, kind) of the jobs with a dispatch in flight."""
        return frozenset(self._taken)
