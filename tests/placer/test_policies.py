"""Hand-checked small cases for the unit estimate and each policy (see conftest.hand_table).

Numbers: one sequence = 110 KV bytes; decode step 10 ms at 100% share, 12 ms at 50%, 6/s ms
below; output 100 tokens, so a batch b at 100% serves b / 1.0 s req/s, at 50% b / 1.2 s.
"""

import pytest

from services.placer.costmodel import CostModelError, CostTable
from services.placer.search import Planner, PlacementError, node_splits
from tests.placer.conftest import WORKLOAD, estimator, hand_table, spec


def test_node_splits_of_eight():
    splits = node_splits(8)
    assert splits[0] == (8,) and splits[-1] == (1,) * 8
    assert (4, 2, 1, 1) in splits and len(splits) == 10


def test_memory_gives_batch_caps():
    est = estimator(device_bytes=1000)
    # 1000 - 400 weights = 600 KV; one sequence reserved (110), 490 // 110 = 4 more -> 5
    assert est.max_batches(1, (spec("a", 1),), (1,)) == [5]
    # two LLMs: 1000 - 800 = 200 < 220 for one sequence each -> does not fit
    assert est.max_batches(1, (spec("a", 1), spec("b", 1)), (1, 1)) is None


def test_spatial_temporal_colocation_beats_temporal_by_hand():
    est = estimator(device_bytes=2000)
    llms, rates = (spec("a", 4), spec("b", 4)), (4.0, 4.0)
    # 2000 - 800 = 1200 KV; 220 reserved, 980 split evenly -> 4 more each -> batch cap 5
    st = est.estimate(1, llms, rates, "spatial-temporal")
    # each needs 4 req/s: at batch 5, 50% share gives 5 / 1.2 = 4.17 >= 4; 45% gives 5 / 1.333 < 4
    assert [e.decode_share for e in st.llms] == [0.5, 0.5]
    assert [e.batch for e in st.llms] == [5, 5]
    assert st.served == pytest.approx(8.0)
    tm = est.estimate(1, llms, rates, "temporal")
    # one at a time: 10 ms x 100 tokens / 5 per batch = 0.2 s of the unit per request; load 1.6
    assert tm.served == pytest.approx(8 / 1.600016, rel=1e-6)
    assert all(e.decode_share == 1.0 and e.prefill_share == 1.0 for e in tm.llms)
    assert est.estimate(1, llms, rates, "muxserve").mode == "spatial-temporal"


def test_decode_share_is_smallest_that_meets_rate_when_prefill_holds_decode_back():
    # work-conserving (CPU) units keep the held-back layout: batch cap 5: need 5 / (t * 0.1) >= 2 -> t <= 25
    # ms: 6/s <= 25 would allow 0.25, but the table measured nothing below 50% (latency there is only
    # extrapolated), so the share stops at 0.5
    u = estimator(device_bytes=1000, work_conserving=True).estimate(1, (spec("a", 2),), (2.0,), "spatial")
    assert u.llms[0].decode_share == 0.5
    assert u.llms[0].prefill_share >= u.llms[0].decode_share
    assert u.served == pytest.approx(2.0)
    # rate 4.5: t <= 11.1 ms -> 12 - 4 (s - 0.5) <= 11.1 -> s >= 0.7225 -> 0.75 on the 5% grid; beside a
    # prefill job (at 50% at least, the table's smallest share) only 1.2 - 0.5 = 0.7 is left: held back
    u = estimator(device_bytes=1000).estimate(1, (spec("a", 4.5),), (4.5,), "spatial")
    assert u.llms[0].decode_share == 0.75 and u.llms[0].prefill_share >= 0.75


def test_lone_llm_decode_takes_what_its_prefill_leaves():
    # rate 2 as above: prefill at the table's smallest share (50%) beside decode, which gets the rest of
    # 100% + the 20% allowance (0.7) rather than the 0.5 it needs: same service, more headroom
    u = estimator(device_bytes=1000).estimate(1, (spec("a", 2),), (2.0,), "spatial")
    assert (u.llms[0].prefill_share, u.llms[0].decode_share) == (0.5, pytest.approx(0.7))
    assert u.served == pytest.approx(2.0)


def prefill_table() -> dict:
    """hand_table with prefill that costs: 100 ms a batch at 100% share, 120 ms at 50%."""
    t = hand_table()
    for share, ms in (("100", 100.0), ("50", 120.0)):
        for cells in t["m"]["1"][share].values():
            for cell in cells.values():
                cell["prefill"] = ms
    return t


def test_prefill_beside_decode_when_the_allowance_admits_both():
    # batch cap 32 (the table's largest); a prefill batch of 32 prompts: 100 ms at 100%, 3.125 ms a request.
    # Held back (allowance 0: a prefill beside decode would leave it 50%, 26.7 req/s): prefill at 75% (the
    # smallest share within 1.1 x 100 ms: 110 ms on the table's line from 50% to 100%, 3.4375 ms a request),
    # decode at 100% (32 / 1.0 s = 32 req/s) but only while no prefill runs: x = (1 - 0.0034375 x) 32 ->
    # x = 32 / 1.11 = 28.83 of 30.
    held = estimator(device_bytes=1e6, table=prefill_table(), overload_allowance=0.0)
    u = held.estimate(1, (spec("a", 30),), (30.0,), "spatial")
    assert u.served == pytest.approx(32 / 1.11, rel=1e-3)
    assert (u.llms[0].prefill_share, u.llms[0].decode_share) == (1.0, 1.0)
    # allowance 0.5: prefill at 50% (3.75 ms a request, 11% of the time) beside decode at 100% -> all 30
    beside = estimator(device_bytes=1e6, table=prefill_table(), overload_allowance=0.5)
    u = beside.estimate(1, (spec("a", 30),), (30.0,), "spatial")
    assert u.served == pytest.approx(30.0)
    assert (u.llms[0].prefill_share, u.llms[0].decode_share) == (0.5, pytest.approx(1.0))


def plan(llms, nodes, dpn, policy, device_bytes=2000, table=None):
    rates = {m.name: m.rate for m in llms}
    return Planner(llms, rates, nodes, dpn, estimator(device_bytes, table)).plan(policy)


def test_spatial_two_llms_two_devices():
    p = plan([spec("a", 4), spec("b", 1)], 1, 2, "spatial")
    assert sorted((u.devices, u.llm_names) for u in p.units) == [([0], ["a"]), ([1], ["b"])]
    assert p.objective == pytest.approx(5.0)


def test_spatial_needs_a_unit_per_llm():
    with pytest.raises(PlacementError, match="no split"):
        plan([spec("a", 4), spec("b", 4)], 1, 1, "spatial")


def test_temporal_and_muxserve_on_one_device():
    llms = [spec("a", 4), spec("b", 4)]
    tm, mx = plan(llms, 1, 1, "temporal"), plan(llms, 1, 1, "muxserve")
    assert tm.objective == pytest.approx(8 / 1.600016, rel=1e-5)
    assert mx.objective == pytest.approx(8.0)
    assert mx.units[0].mode == "spatial-temporal" and tm.units[0].mode == "temporal"


def test_three_llms_four_devices_all_policies():
    table = hand_table(devices=(1, 2))
    llms = [spec("a", 6), spec("b", 3), spec("c", 1)]
    res = {p: plan(llms, 1, 4, p, table=table) for p in ("spatial", "temporal", "muxserve")}
    for p in res.values():
        assert p.placed() == {"a", "b", "c"}
        assert sorted(d for u in p.units for d in u.devices) == sorted(set(d for u in p.units for d in u.devices))
    assert res["muxserve"].objective >= res["spatial"].objective - 1e-9
    assert res["muxserve"].objective >= res["temporal"].objective - 1e-9
    # a alone needs 6 req/s: on 1 device its batch cap (14) serves 14 req/s at 100%: everything fits
    assert res["spatial"].objective == pytest.approx(10.0)


def test_llm_too_large_is_named():
    with pytest.raises(PlacementError, match="'huge'"):
        plan([spec("a", 1), spec("huge", 1, weight=10_000)], 1, 2, "muxserve")


def test_empty_cluster():
    with pytest.raises(PlacementError, match="empty cluster"):
        plan([spec("a", 1)], 0, 8, "muxserve")


def test_cost_table_without_the_model_is_named():
    with pytest.raises(CostModelError, match="'x'"):
        plan([spec("x", 1, key="llama-1b")], 1, 1, "muxserve")


def test_rescore_keeps_layout_and_reflects_new_rates():
    llms = [spec("a", 4), spec("b", 4)]
    p = plan(llms, 1, 1, "muxserve")
    later = Planner(llms, {"a": 8.0, "b": 0.5}, 1, 1, estimator(2000)).rescore(p)
    assert later.layout() == p.layout()
    assert {m.name: m.rate for m in later.units[0].llms} == {"a": 8.0, "b": 0.5}
    assert later.objective < 8.5


def test_capacity_scale_is_the_largest_load_the_layout_serves():
    from services.placer.capacity import capacity_scale, serves

    llms = [spec("a", 4), spec("b", 1)]
    at = lambda s: Planner(llms, {m.name: m.rate * s for m in llms}, 1, 2, estimator(2000))  # noqa: E731
    p = at(1.0).plan("spatial")
    cap = capacity_scale(at, p)
    assert cap > 1  # the offered load is served with room to spare: the capped objective cannot say how much
    assert serves(at(cap), p, 0.99) and not serves(at(cap * 1.05), p, 0.99)
    assert capacity_scale(at, p, lo=cap * 2) == 0.0


def test_work_conserving_units_keep_muxserves_mode_where_temporal_estimates_better():
    """Compute-bound decode (half the share, twice the time): one job at a time on the whole unit
    estimates better than decode jobs side by side. A GPU unit then falls back to temporal (FCFS); a
    work-conserving one (CPU process jobs: a lone dispatch gets every free core) keeps spatial-temporal,
    its decode shares (the jobs' own cores) and the temporal estimate's throughput."""
    from services.placer.costmodel import CostTable
    from services.placer.estimator import UnitEstimator
    from tests.placer.conftest import WORKLOAD

    table = hand_table()
    for cells in table["m"]["1"]["50"].values():
        for cell in cells.values():
            cell["decoding"] = 20.0
    llms, rates = (spec("a", 6), spec("b", 2)), (6.0, 2.0)
    gpu, cpu = (UnitEstimator(CostTable(table), WORKLOAD, 2000, 1.0, work_conserving=w) for w in (False, True))
    st, tm = gpu.estimate(1, llms, rates, "spatial-temporal"), gpu.estimate(1, llms, rates, "temporal")
    assert tm.served > st.served
    on_gpu, on_cpu = gpu.estimate(1, llms, rates, "muxserve"), cpu.estimate(1, llms, rates, "muxserve")
    assert on_gpu.mode == "temporal" and on_gpu.served == pytest.approx(tm.served)
    assert on_cpu.mode == "spatial-temporal" and on_cpu.served == pytest.approx(tm.served)
    assert [e.decode_share for e in on_cpu.llms] == [e.decode_share for e in st.llms]
    assert sum(e.decode_share for e in on_cpu.llms) <= 1.0 + 1e-9
    assert cpu.estimate(1, llms, rates, "temporal").mode == "temporal"  # the temporal policy is unchanged


def test_host_work_takes_cores_from_a_cpu_unit():
    # rate 2, 100 output tokens: 200 tokens/s; h = 4 ms a token of host work leaves 1 - 0.8 f of the core
    # (f the fraction still served); with c = capacity / rate of the estimate without host work,
    # f = min(1, c (1 - 0.8 f)) -> f = c / (1 + 0.8 c)
    plain = estimator(device_bytes=1000, work_conserving=True).estimate(1, (spec("a", 2),), (2.0,), "spatial")
    c = plain.headroom
    assert c > 1 and plain.served == pytest.approx(2.0)
    host = estimator(device_bytes=1000, work_conserving=True, host_cpu_s_per_token=0.004)
    u = host.estimate(1, (spec("a", 2),), (2.0,), "spatial")
    assert u.served == pytest.approx(2 * c / (1 + 0.8 * c), rel=1e-6)
    assert u.llms[0].decode_share == plain.llms[0].decode_share  # the layout stays; only what it serves drops


def test_host_work_is_a_cpu_cluster_term():
    from services.placer.config import PlacerConfig
    from services.placer.service import make_planner

    specs = [spec("a", 2)]
    for device, want in (("cpu", 0.004), ("cuda", 0.0)):
        cfg = PlacerConfig(device=device, host_cpu_ms_per_token=4.0)
        assert make_planner(specs, {}, 1, 1, cfg, CostTable(hand_table())).est.host == want
