import pytest

from services.placer.config import PlacerConfig
from services.placer.placement import LLMPlacement, Placement, Unit, diff
from services.placer.replacement import DriftTracker, blend, decide, drift


def placement(layout: dict[str, list[str]], objective: float) -> Placement:
    units = [Unit(uid, [i], [LLMPlacement(n, 1.0, 0.5, 1.0) for n in names])
             for i, (uid, names) in enumerate(layout.items())]
    return Placement("muxserve", objective, units)


def test_blend_ignores_unknown_and_uses_priors_without_traffic():
    assert blend({"a": 2.0}, {}, 0.7) == {"a": 2.0}
    assert blend({"a": 2.0, "b": 1.0}, {"a": 4.0, "zzz": 9.0}, 0.5) == {"a": 3.0, "b": 0.5}


def test_drift_must_be_sustained():
    cfg = PlacerConfig(drift_threshold=0.3, sustain_s=10)
    t = DriftTracker(cfg, {"a": 1.0, "b": 1.0})
    assert drift({"a": 1.0, "b": 1.0}, {"a": 0.0, "b": 2.0}) == 1.0
    assert not t.observe({"a": 0.0, "b": 2.0}, now=100)
    assert not t.observe({"a": 1.0, "b": 1.0}, now=105)   # back to normal: timer resets
    assert not t.observe({"a": 0.0, "b": 2.0}, now=106)
    assert t.observe({"a": 0.0, "b": 2.0}, now=116)


def test_hysteresis():
    cfg = PlacerConfig(min_gain=0.05, horizon_s=100, load_time_s=30)
    old = placement({"u0x1": ["a", "b"], "u1x1": ["c"]}, 10.0)
    new = placement({"u0x1": ["a"], "u1x1": ["b", "c"]}, 10.3)
    assert not decide(old, 10.0, new, {"b": 1.0}, cfg).switch          # +3% < 5%
    new.objective = 11.0
    d = decide(old, 10.0, new, {"b": 5.0}, cfg)                           # 100 req gain vs 150 to move b
    assert not d.switch and "does not pay" in d.reason
    d = decide(old, 10.0, new, {"b": 1.0}, cfg)                           # 100 vs 30
    assert d.switch and "['b']" in d.reason
    same = placement({"u0x1": ["a", "b"], "u1x1": ["c"]}, 10.0)
    assert decide(old, 10.0, same, {}, cfg).switch                        # nothing moves: shares only


def test_diff():
    old = placement({"u0x1": ["a", "b"]}, 1)
    new = placement({"u0x1": ["b", "c"]}, 1)
    assert diff(old, new, "u0x1") == (["c"], ["a"])
    assert diff(None, new, "u0x1") == (["b", "c"], [])
    assert diff(old, new, "u9x1") == ([], [])
    assert diff(old, None, "u0x1") == ([], ["a", "b"])
    assert Placement.from_dict(new.to_dict()) == new


def test_fixed_units_keep_devices_and_move_only_llms():
    """Re-placement inside the workers' units: the split is given, only the LLM assignment is searched."""
    from services.placer.search import PlacementError, Planner
    from tests.placer.conftest import estimator, hand_table, spec

    specs = [spec("hot", 8.0), spec("warm", 2.0), spec("cold", 0.1)]
    est = estimator(device_bytes=10_000, table=hand_table(devices=(1, 2)))
    two = Planner(specs, {}, 1, 2, est, units=[(0, 1), (0, 1)]).plan("muxserve")
    assert sorted(u.devices for u in two.units) == [[0], [1]]
    assert sorted(x.name for u in two.units for x in u.llms) == ["cold", "hot", "warm"]
    assert two.objective == pytest.approx(sum(u.est_throughput for u in two.units), rel=1e-5)
    one = Planner(specs, {}, 1, 2, est, units=[(0, 2)]).plan("temporal")
    assert [u.devices for u in one.units] == [[0, 1]] and len(one.units[0].llms) == 3
    with pytest.raises(PlacementError, match="spatial"):
        Planner(specs, {}, 1, 2, est, units=[(0, 1), (0, 1)]).plan("spatial")
