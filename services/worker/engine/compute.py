"""Admission by compute share (MuxServe's compute units) for the jobs of one unit.

A unit has 1.0 of compute. Each job ("<llm>/prefill", "<llm>/decode") has a share in (0, 1]; a job may
start a dispatch when its share fits what the unit has free plus `allowance` (MuxServe allowed 20%
overload). A job without a share is always admitted (it shares the unit's GPU with the others,
time-sliced by the driver). What a dispatch took is what returns when it ends, so a change of shares
(`set_shares`) takes effect at the next dispatch and never fails one in flight.

With `cores` (CPU process jobs), a core runs one dispatch at a time and the cores are the compute
units: a job wants max(1, round(share x cores)) cores (all of them without a share) and is admitted
when that many are free (this replaces the share rule); each dispatch gets its job's home cores
(`home`) when they are free, else other free ones (`cores_of`); cores still free once a scheduling
pass has planned its dispatches are spread over them (`spread`: work-conserving, a share is the least
a job gets; off with `spread=False`, engine key `spread_cores`). While spreading, in a unit shared by
several LLMs a job wants at most all cores but one: none waits for the whole unit to drain (nor holds
it while another LLM's short step waits), and it still gets every core that is free when it starts.
OpenMP jobs that share a core wait on each other's time slices at every barrier, which costs more than
the overlap gains (docs/benchmarks.md, multiplexing).
"""

from __future__ import annotations

from services.worker.engine.compute_share import cores_for

EPS = 1e-9


class ComputeBudget:
    def __init__(self, shares: dict[str, float] | None = None, allowance: float = 0.2,
                 cores: list[int] | None = None, spread: bool = True):
        if allowance < 0:
            raise ValueError(f"overload allowance must be >= 0, got {allowance}")
        self.allowance = allowance
        self.shares: dict[str, float] = {}
        self._taken: dict[tuple[str, str], float] = {}
        self.cores = sorted(cores) if cores else None
        self.spreads = spread  # whether spread() hands out the free cores (False: a dispatch keeps its share's)
        self.home: dict[str, list[int]] = {}
        self._held: dict[tuple[str, str], list[int]] = {}
        self.set_shares(shares or {})

    def set_shares(self, shares: dict[str, float]) -> None:
        """shares: {"<llm>/<kind>": fraction in (0, 1]}; jobs not named are unconstrained."""
        for job, share in shares.items():
            if not 0 < float(share) <= 1:
                raise ValueError(f"compute share of {job!r} must be in (0, 1], got {share}")
        self.shares = {job: float(s) for job, s in shares.items()}
        self._shared = len({job.split("/")[0] for job in self.shares}) > 1  # jobs of several LLMs

    def share(self, llm: str, kind: str) -> float:
        return self.shares.get(f"{llm}/{kind}", 0.0)

    @property
    def used(self) -> float:
        return sum(self._taken.values())

    def wanted_cores(self, llm: str, kind: str) -> int:
        n = len(self.cores or ())
        want = cores_for(self.share(llm, kind), n)
        return min(want, n - 1) if self.spreads and self._shared and n > 1 else want

    def free_cores(self) -> list[int]:
        held = {c for cs in self._held.values() for c in cs}
        return [c for c in self.cores or () if c not in held]

    def fits(self, llm: str, kind: str) -> bool:
        if self.cores is not None:
            return len(self.free_cores()) >= self.wanted_cores(llm, kind)
        return self.used + self.share(llm, kind) <= 1.0 + self.allowance + EPS

    def take(self, llm: str, kind: str) -> None:
        if (llm, kind) in self._taken:
            raise RuntimeError(f"job {llm}/{kind} already has a dispatch in flight")
        self._taken[(llm, kind)] = self.share(llm, kind)
        if self.cores is not None:
            free, want = self.free_cores(), self.wanted_cores(llm, kind)
            home = [c for c in self.home.get(f"{llm}/{kind}", []) if c in free][:want]
            self._held[(llm, kind)] = sorted(home + [c for c in free if c not in home][:want - len(home)])

    def spread(self, jobs: list[tuple[str, str]]) -> None:
        """Give the cores still free to the dispatches just taken for `jobs`, one each in turn."""
        if not self.spreads:
            return
        jobs = [j for j in jobs if j in self._held]
        free = self.free_cores() if self.cores is not None else []
        for i, core in enumerate(free if jobs else []):
            self._held[jobs[i % len(jobs)]] = sorted(self._held[jobs[i % len(jobs)]] + [core])

    def cores_of(self, llm: str, kind: str) -> list[int] | None:
        """The cores of the job's dispatch in flight (None without core tracking)."""
        return self._held.get((llm, kind))

    def give(self, llm: str, kind: str) -> None:
        self._taken.pop((llm, kind), None)
        self._held.pop((llm, kind), None)

    @property
    def busy(self) -> frozenset:
        """(llm, kind) of the jobs with a dispatch in flight."""
        return frozenset(self._taken)
