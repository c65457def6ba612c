"""UnitCompute: one unit's compute as its engine uses it: the admission budget (compute.py), the CPU
cores dispatches may run on, and each job's planned home cores (compute_share.assign_cores).

`plan(names)` divides the unit's cores among ALL jobs of the LLMs named, by share; `set_plan` makes a
plan current; `share_of(llm, kind)` is the ComputeShare a dispatch of that job runs with: the cores the
budget gave it (CPU process jobs, one dispatch per core), else its planned cores, else None (a GPU job
keeps the MPS percentage it started with).
"""

from __future__ import annotations

import os

from services.worker.engine.compute import ComputeBudget
from services.worker.engine.compute_share import ComputeShare, assign_cores
from services.worker.engine.config import EngineConfig


class UnitCompute:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.budget = ComputeBudget(config.compute_shares, config.overload_allowance, self._tracked_cores(),
                                    config.spread_cores)
        self.planned: dict[str, ComputeShare] = {}  # "<llm>/<kind>" -> the job's home cores

    def _tracked_cores(self) -> list[int] | None:
        """CPU process jobs: the unit's cores, one dispatch per core at a time (compute.py)."""
        c = self.config
        if c.device != "cpu" or c.job_mode != "process":
            return None
        return sorted(c.cores or os.sched_getaffinity(0))

    def plan(self, names: list[str]) -> dict[str, ComputeShare]:
        """CPU: each job's cores, the unit's cores divided among ALL jobs of `names` by share."""
        if self.config.device != "cpu":
            return {}
        return job_homes(self.budget.shares, names, self.config.cores)

    def set_plan(self, plan: dict[str, ComputeShare]) -> None:
        self.planned = plan
        self.budget.home = {job: share.cores for job, share in plan.items() if share.cores}

    def set_shares(self, shares: dict[str, float], names: list[str]) -> None:
        self.budget.set_shares(shares)
        self.set_plan(self.plan(names))

    def share_of(self, llm: str, kind: str) -> ComputeShare | None:
        cores = self.budget.cores_of(llm, kind)
        if cores:
            return ComputeShare(cores=cores, threads=len(cores))
        return self.planned.get(f"{llm}/{kind}")


def job_homes(shares: dict[str, float], names: list[str], cores: list[int] | None) -> dict[str, ComputeShare]:
    """Each job's home cores: `cores` divided among the prefill and decode jobs of `names`, in that order, by
    their shares ({"<llm>/<kind>": share}; a job without one gets every core)."""
    jobs = [f"{n}/{k}" for n in names for k in ("prefill", "decode")]
    return assign_cores({j: shares.get(j) for j in jobs}, cores)
