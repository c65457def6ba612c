"""A restarted placer (empty worker registry, the stored placement) gives each worker back the unit the
placement names for its address, whatever order the workers re-register in: nothing is unloaded."""

from __future__ import annotations

from services.placer.placement import LLMPlacement, Placement, Unit
from services.placer.workers import WorkerRegistry


def _stored() -> Placement:
    return Placement("spatial", 1.0, [Unit("u0", [0], [LLMPlacement("llama", 2.0, 0.9)], worker_address="h:1"),
                                      Unit("u1", [1], [LLMPlacement("qwen", 1.0, 0.9)], worker_address="h:2")])


def test_each_worker_gets_its_own_unit_back_in_any_order():
    p, reg = _stored(), WorkerRegistry()
    reg.register("worker-1", "h:2", 1, 0.0)  # the holder of u1 comes back first
    reg.assign(p)
    assert reg.workers["worker-1"].unit_id == "u1"
    assert [u.worker_address for u in p.units] == ["", "h:2"]  # u0 waits for a worker
    reg.register("worker-0", "h:1", 1, 0.0)
    reg.assign(p)
    assert reg.workers["worker-0"].unit_id == "u0"
    assert [u.worker_address for u in p.units] == ["h:1", "h:2"]


def test_a_new_worker_still_takes_a_free_unit():
    p, reg = _stored(), WorkerRegistry()
    reg.register("fresh", "h:9", 1, 0.0)  # no unit names its address: the first free unit of its size
    reg.assign(p)
    assert reg.workers["fresh"].unit_id == "u0"
