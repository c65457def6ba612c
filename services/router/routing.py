"""The router's cached, versioned view of where models are hosted, and least-loaded worker choice.

A `PlacementView` maps each model to the units hosting it (unit id + worker address), and names the
configured models the placer left out because their checkpoint cannot be read (with why). The
`RoutingTable` holds the current view and this router's in-flight count per worker address; it
orders a model's workers by (in flight, forwarded so far), so ties rotate instead of piling on one.
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Host:
    unit_id: str
    address: str


@dataclass(frozen=True)
class PlacementView:
    version: int
    hosts: dict[str, tuple[Host, ...]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # models the placer left out (unreadable) -> why

    @classmethod
    def static(cls, workers: dict[str, list[str]]) -> "PlacementView":
        """A fixed table {model: [address, ...]}; each address doubles as its unit id."""
        return cls(0, {m: tuple(Host(a, a) for a in addrs) for m, addrs in workers.items()})


class RoutingTable:
    def __init__(self, view: PlacementView | None = None):
        self.view = view or PlacementView(-1)
        self.in_flight: Counter[str] = Counter()
        self.forwarded: Counter[str] = Counter()

    @property
    def version(self) -> int:
        return self.view.version

    def update(self, view: PlacementView, force: bool = False) -> bool:
        """Adopt `view` if it is newer (or `force`: the placer's own stream, which may restart at 1)."""
        if not force and view.version <= self.view.version:
            return False
        if view != self.view:
            log.info("placement version %d: %s", view.version,
                     {m: [h.address for h in hs] for m, hs in view.hosts.items()})
        self.view = view
        return True

    def units(self, model: str) -> list[str]:
        return [h.unit_id for h in self.view.hosts.get(model, ())]

    def candidates(self, model: str) -> list[str]:
        """Worker addresses hosting `model`, least loaded first."""
        addresses = list(dict.fromkeys(h.address for h in self.view.hosts.get(model, ())))
        return sorted(addresses, key=lambda a: (self.in_flight[a], self.forwarded[a]))

    @contextmanager
    def acquire(self, address: str):
        """Count one request in flight on `address` for the duration of the block."""
        self.in_flight[address] += 1
        self.forwarded[address] += 1
        try:
            yield address
        finally:
            self.in_flight[address] -= 1
            if self.in_flight[address] <= 0:
                del self.in_flight[address]
