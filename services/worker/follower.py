"""Reconcile the worker's hosted LLMs to the placer's placement.

The worker registers with the placer (worker id, advertised address, devices), watches the placement,
and for its unit: loads newly assigned LLMs, drains then unloads removed ones (in-flight requests
finish; new ones for that LLM go elsewhere because the router follows the same placement). Reconnects
with backoff when the placer is away; the engine keeps serving what it hosts meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import grpc

from muxserve.v1 import placer_pb2, placer_pb2_grpc

log = logging.getLogger(__name__)


@dataclass
class UnitAssignment:
    """What the placement asks of this worker: its unit, the LLMs (name -> rate) it hosts, the unit's
    mode ("spatial-temporal" or "temporal"), its global device ids and each job's compute share
    ("<llm>/prefill" | "<llm>/decode" -> fraction of the unit; empty: no shares, every job admitted)."""

    version: int
    unit_id: str
    llms: dict[str, float]
    mode: str = "spatial-temporal"
    devices: list[int] = field(default_factory=list)
    shares: dict[str, float] = field(default_factory=dict)


def my_unit(placement: placer_pb2.Placement, unit_id: str, address: str) -> UnitAssignment:
    """The unit this worker holds: by unit id from registration, else by advertised address."""
    for unit in placement.units:
        if (unit_id and unit.unit_id == unit_id) or unit.worker_address == address:
            shares = {}
            for llm in unit.llms:
                for kind, share in (("prefill", llm.prefill_share), ("decode", llm.decode_share)):
                    if share > 0:
                        shares[f"{llm.name}/{kind}"] = min(float(share), 1.0)
            return UnitAssignment(placement.version, unit.unit_id, {l.name: l.rate for l in unit.llms},
                                  unit.mode or "spatial-temporal", list(unit.devices), shares)
    return UnitAssignment(placement.version, "", {})


class PlacementFollower:
    """Runs until cancelled; `apply(assignment)` is awaited for each new placement version. Every
    registration carries `failures()`: {model: why it failed to load here} (the placer logs them); an
    apply that raises is logged and retried (with backoff), never left to end the task silently.

    Re-registering is the worker's heartbeat: every `register_every_s`, or the placer's `heartbeat_s`
    (its worker_ttl_s / 3) when that is shorter. A registration answered with no unit while the placer has
    a placement makes this worker a spare: `spare()` is called (once), and the worker waits, hosting nothing,
    until the placer hands it the unit of a worker that went silent (or a new one)."""

    def __init__(self, placer_address: str, worker_id: str, address: str, num_devices: int,
                 apply: Callable[[UnitAssignment], Awaitable[None]], register_every_s: float = 5.0,
                 failures: Callable[[], dict[str, str]] = dict, spare: Callable[[], None] = lambda: None):
        self.placer_address, self.worker_id, self.address = placer_address, worker_id, address
        self.num_devices, self.apply, self.failures, self.spare = num_devices, apply, failures, spare
        self.register_every_s = register_every_s
        self.unit_id = ""
        self.version = 0
        self._spare_told = False

    async def run(self) -> None:
        backoff = 0.2
        while True:
            try:
                async with grpc.aio.insecure_channel(self.placer_address) as channel:
                    await self._follow(placer_pb2_grpc.PlacerStub(channel))
            except grpc.aio.AioRpcError as err:
                log.info("placer at %s: %s; retrying in %.1fs", self.placer_address, err.code().name, backoff)
            except Exception:  # noqa: BLE001 - a failed apply: log it, keep following
                log.exception("applying the placement failed; retrying in %.1fs", backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _register(self, stub: placer_pb2_grpc.PlacerStub) -> None:
        reg = await stub.RegisterWorker(placer_pb2.RegisterWorkerRequest(
            worker_id=self.worker_id, address=self.address, num_devices=self.num_devices,
            failed_models=self.failures()), timeout=10)
        self.unit_id = reg.unit_id
        if reg.heartbeat_s > 0:
            self.register_every_s = min(self.register_every_s, reg.heartbeat_s)
        if not reg.unit_id and reg.version > 0 and not self.version and not self._spare_told:
            log.info("placement v%d has no unit for worker %s: a spare until a unit loses its worker",
                     reg.version, self.worker_id)
            self._spare_told = True
            self.spare()

    async def _keep_registered(self, stub: placer_pb2_grpc.PlacerStub) -> None:
        while True:
            await asyncio.sleep(self.register_every_s)
            await self._register(stub)

    async def _follow(self, stub: placer_pb2_grpc.PlacerStub) -> None:
        await self._register(stub)
        heartbeat = asyncio.ensure_future(self._keep_registered(stub))
        try:
            async for placement in stub.WatchPlacement(placer_pb2.GetPlacementRequest()):
                if heartbeat.done():
                    heartbeat.result()  # re-raise a failed registration
                assignment = my_unit(placement, self.unit_id, self.address)
                if not assignment.unit_id or placement.version <= self.version:
                    continue  # not (yet) holding a unit of this version, or seen it already
                self.unit_id = assignment.unit_id
                await self.apply(assignment)
                self.version = placement.version
                if self.failures():
                    await self._register(stub)  # tell the placer now, not at the next heartbeat
        finally:
            heartbeat.cancel()
