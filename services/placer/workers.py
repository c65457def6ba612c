"""Which worker holds which unit of the current placement.

Workers call RegisterWorker at start and then periodically (a heartbeat); one not seen for `ttl_s`
is gone and its unit is free for another. A worker keeps its unit across placements while the unit
(same devices, so same id) exists; a unit with no worker goes first to the worker at the address the
placement names for it (a placer restarted from the stored placement gives each worker back its own
unit, so nothing is unloaded), else to a free worker with exactly its number of devices, else to one
with more.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .placement import Placement


class WorkerError(ValueError):
    """Bad RegisterWorker input; the message names the field."""


@dataclass
class WorkerInfo:
    worker_id: str
    address: str
    num_devices: int
    last_seen: float
    unit_id: str = ""
    failed: dict[str, str] = field(default_factory=dict)  # models that failed to load there -> why


class WorkerRegistry:
    def __init__(self, ttl_s: float = 30.0):
        self.ttl_s = ttl_s
        self.workers: dict[str, WorkerInfo] = {}

    def register(self, worker_id: str, address: str, num_devices: int, now: float) -> WorkerInfo:
        if not worker_id:
            raise WorkerError("worker_id must not be empty")
        if not address or ":" not in address:
            raise WorkerError(f"address must be host:port, got {address!r}")
        if num_devices < 1:
            raise WorkerError(f"num_devices must be >= 1, got {num_devices}")
        w = self.workers.get(worker_id)
        if w is None or w.address != address or w.num_devices != num_devices:
            w = self.workers[worker_id] = WorkerInfo(worker_id, address, num_devices, now)
        w.last_seen = now
        return w

    def expire(self, now: float) -> list[str]:
        gone = [w for w, info in self.workers.items() if now - info.last_seen > self.ttl_s]
        for w in gone:
            del self.workers[w]
        return gone

    def assign(self, placement: Placement) -> bool:
        """Fill unit.worker_address (and worker.unit_id); True when any unit's worker changed."""
        by_unit = {w.unit_id: w for w in self.workers.values() if placement.unit(w.unit_id)}
        for w in self.workers.values():
            if w.unit_id not in by_unit or by_unit[w.unit_id] is not w:
                w.unit_id = ""
        free = sorted((w for w in self.workers.values() if not w.unit_id), key=lambda w: w.worker_id)
        for u in placement.units:  # first, a unit goes back to the worker the placement names (a restarted
            if u.unit_id not in by_unit and u.worker_address:  # placer: the workers keep what they host)
                w = next((w for w in free if w.address == u.worker_address and w.num_devices >= len(u.devices)), None)
                if w is not None:
                    free.remove(w)
                    w.unit_id, by_unit[u.unit_id] = u.unit_id, w
        for u in placement.units:
            if u.unit_id not in by_unit:
                w = _pick(free, len(u.devices))
                if w is not None:
                    free.remove(w)
                    w.unit_id, by_unit[u.unit_id] = u.unit_id, w
        changed = False
        for u in placement.units:
            addr = by_unit[u.unit_id].address if u.unit_id in by_unit else ""
            changed |= addr != u.worker_address
            u.worker_address = addr
        return changed


def _pick(free: list[WorkerInfo], devices: int) -> WorkerInfo | None:
    exact = [w for w in free if w.num_devices == devices]
    bigger = sorted((w for w in free if w.num_devices > devices), key=lambda w: w.num_devices)
    return (exact or bigger or [None])[0]
