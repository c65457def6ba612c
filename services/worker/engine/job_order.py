"""JobOrder: when each job (llm, kind) of a unit last dispatched and returned, and the order the
scheduler offers decode jobs in.

Deadline order (scale > 0): a job's key is its latest return + scale x the moving mean of its dispatch
durations, lowest first, so a job of short steps goes ahead of one of long steps until the long one
has waited about scale x its own step (none starves: a waiting job's key does not grow). Scale 0: least
recently dispatched first. Times are seconds on `clock` (time.monotonic; the simulator's virtual clock).
"""

from __future__ import annotations

import time

Job = tuple[str, str]  # (llm, kind)


class JobOrder:
    def __init__(self, scale: float = 0.0, clock=time.monotonic):
        self.scale = scale
        self.clock = clock
        self._count = 0
        self._last: dict[Job, int] = {}  # number of its latest dispatch
        self._started: dict[Job, float] = {}  # when its dispatch in flight was planned
        self._returned: dict[Job, float] = {}  # when its latest dispatch returned
        self._mean: dict[Job, float] = {}  # moving mean of its dispatch seconds

    def started(self, job: Job) -> None:
        self._count += 1
        self._last[job] = self._count
        self._started[job] = self.clock()

    def returned(self, job: Job) -> None:
        now = self.clock()
        took = now - self._started.get(job, now)
        self._mean[job] = took if job not in self._mean else 0.7 * self._mean[job] + 0.3 * took
        self._returned[job] = now

    def key(self, job: Job) -> float:
        if self.scale <= 0:
            return self._last.get(job, -1)
        return self._returned.get(job, float("-inf")) + self.scale * self._mean.get(job, 0.0)
