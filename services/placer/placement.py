"""The placement: which units exist, their devices, their LLMs and each job's compute share.

Plain dataclasses with a JSON form (what Redis stores and `muxserve plan --json` prints) and the
diff a worker reconciles with. Device ids are global: node * devices_per_node + local index. A
unit's id derives from its devices (`u<first>x<count>`), so a unit with the same devices keeps its id
(and its worker) across re-placements.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class LLMPlacement:
    name: str
    prefill_share: float   # fraction of the unit's compute, (0, 1]; >= decode_share
    decode_share: float
    rate: float = 0.0      # req/s the placement was computed for
    est_throughput: float = 0.0
    batch: int = 0         # the decode batch the estimate assumed


@dataclass
class Unit:
    unit_id: str
    devices: list[int]
    llms: list[LLMPlacement] = field(default_factory=list)
    worker_address: str = ""
    est_throughput: float = 0.0
    mode: str = "spatial-temporal"  # or "temporal": one job at a time

    @property
    def llm_names(self) -> list[str]:
        return [m.name for m in self.llms]


@dataclass
class Placement:
    policy: str
    objective: float        # estimated served req/s (sum over LLMs of min(throughput, rate))
    units: list[Unit]
    version: int = 0
    total_rate: float = 0.0
    failed_models: dict[str, str] = field(default_factory=dict)  # configured, left out (unreadable) -> why

    def unit(self, unit_id: str) -> Unit | None:
        return next((u for u in self.units if u.unit_id == unit_id), None)

    def placed(self) -> set[str]:
        return {m.name for u in self.units for m in u.llms}

    def units_of(self, llm: str) -> list[Unit]:
        return [u for u in self.units if llm in u.llm_names]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Placement":
        units = [Unit(**{**u, "llms": [LLMPlacement(**m) for m in u.get("llms", [])]})
                 for u in d.get("units", [])]
        return cls(d["policy"], float(d["objective"]), units, int(d.get("version", 0)),
                   float(d.get("total_rate", 0.0)), dict(d.get("failed_models") or {}))

    def layout(self) -> dict[str, tuple[str, ...]]:
        """unit_id -> sorted LLM names: what moving between placements is measured on."""
        return {u.unit_id: tuple(sorted(u.llm_names)) for u in self.units}


def unit_id(devices: list[int]) -> str:
    return f"u{min(devices)}x{len(devices)}"


def diff(old: Placement | None, new: Placement | None, unit_id: str) -> tuple[list[str], list[str]]:
    """(to_load, to_unload) for the worker holding `unit_id`, going from `old` to `new`.

    to_load: LLMs the unit hosts in `new` but not in `old`; to_unload: the reverse (drain first).
    A unit missing from a placement hosts nothing there. Both lists are sorted.
    """
    before = set(old.unit(unit_id).llm_names) if old and old.unit(unit_id) else set()
    after = set(new.unit(unit_id).llm_names) if new and new.unit(unit_id) else set()
    return sorted(after - before), sorted(before - after)


def moved_llms(old: Placement, new: Placement) -> set[str]:
    """LLMs that some unit must newly load going from `old` to `new`."""
    moved = set()
    for u in new.units:
        before = set(old.unit(u.unit_id).llm_names) if old.unit(u.unit_id) else set()
        moved |= set(u.llm_names) - before
    return moved
