"""Learns each model's context length from the workers hosting it (muxserve.v1.Worker.GetStatus).

A worker may serve a model with a shorter context than its checkpoint allows (engine `max_model_len`).
Every `interval_s` the refresher asks each worker of the current routing view for its status and
lowers the router's limit to what the workers report (never raises it past the checkpoint's, when
known). Failures are logged and retried next round; they never touch requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import grpc

from muxserve.v1 import worker_pb2
from services.router.config import ModelLimits
from services.router.forward import WorkerClients
from services.router.routing import RoutingTable

log = logging.getLogger(__name__)


def merge_limit(configured: int, reported: list[int]) -> int:
    """The tightest known context: the checkpoint's (0 = unknown) and every worker's report (0 = none)."""
    known = [n for n in (configured, *reported) if n > 0]
    return min(known) if known else 0


class LimitsRefresher:
    def __init__(self, models: dict[str, ModelLimits], table: RoutingTable, clients: WorkerClients,
                 interval_s: float = 5.0, timeout_s: float = 1.0):
        self.models = models
        self.configured = {name: lim.max_model_len for name, lim in models.items()}
        self.table, self.clients = table, clients
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="limits-refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval_s)

    async def refresh(self) -> None:
        """One round: ask every worker of the current view, then update the models' limits."""
        addresses = sorted({h.address for hosts in self.table.view.hosts.values() for h in hosts})
        statuses = await asyncio.gather(*(self._status(a) for a in addresses))
        reported: dict[str, list[int]] = {}
        for status in statuses:
            for m in status.models if status is not None else ():
                reported.setdefault(m.name, []).append(int(m.max_model_len))
        for name, lim in list(self.models.items()):
            new = merge_limit(self.configured[name], reported.get(name, []))
            if new != lim.max_model_len:
                log.info("model %s: max_model_len %d -> %d (from workers)", name, lim.max_model_len, new)
                self.models[name] = dataclasses.replace(lim, max_model_len=new)

    async def _status(self, address: str) -> worker_pb2.WorkerStatus | None:
        try:
            return await self.clients.stub(address).GetStatus(worker_pb2.WorkerStatusRequest(),
                                                               timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            log.debug("worker %s status: %s", address, exc.code().name)
            return None
