"""The simulator: the engine's scheduler on a virtual clock, checked against makespans computed by hand."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml

from muxserve import workload
from services.memmgr.quotas import QuotaPolicy
from services.placer.costmodel import CostTable
from services.placer.placement import LLMPlacement, Placement, Unit
from services.placer.simulator import SimConfig, SimLLM, SimUnit, Simulation, metrics, simulate
from services.placer.simulator.cli import simulate_main
from services.worker.engine.compute import ComputeBudget
from services.worker.engine.scheduler import Scheduler
from services.worker.engine.sequence import Sequence
from services.worker.engine.types import SamplingParams

P100, P50, D100, D50 = 10.0, 20.0, 2.0, 4.0  # ms: prefill / decode step at 100% and 50% share


def flat_table(keys=("a", "b")) -> CostTable:
    """Latency independent of batch and context; half the share, twice the time."""
    def cells(p, d):
        return {str(b): {str(q): {"prefill": p, "decoding": d} for q in (8, 4096)} for b in (1, 256)}
    return CostTable({k: {"1": {"50": cells(P50, D50), "100": cells(P100, D100)}} for k in keys})


LLMS = {n: SimLLM(n, n, weight_bytes=0, kv_bytes_per_token=64, rate=1.0) for n in ("a", "b")}


def unit(mode: str, shares=(1.0, 1.0), names=("a", "b")) -> Placement:
    llms = [LLMPlacement(n, shares[0], shares[1]) for n in names]
    return Placement("test", 0.0, [Unit("u0x1", [0], llms, mode=mode)])


def req(rid, model, t, prompt=4, out=3):
    return workload.Request(rid, model, t, (0,) * prompt, out)


def cfg(**kw) -> SimConfig:
    base = dict(device="cuda", device_bytes=1 << 30, memory_utilization=1.0, block_size=4,
                sim_block_bytes=256, overload_allowance=0.0, quota=QuotaPolicy(adapt_interval_s=0))
    return SimConfig(**{**base, **kw})


def test_units_run_the_engines_scheduler_classes():
    u = SimUnit(unit("spatial-temporal").units[0], LLMS, flat_table(), cfg())
    assert type(u.scheduler) is Scheduler and type(u.budget) is ComputeBudget


def test_temporal_unit_makespan_by_hand():
    # one dispatch at a time, FCFS by oldest request: A's prefill, A's two decode steps, then B's
    # prefill and its one decode step: A ends at P + 2D, B at 2P + 3D (all at 100% share).
    recs = simulate(unit("temporal"), LLMS, [req("A", "a", 0.0, out=3), req("B", "b", 0.001, out=2)],
                    flat_table(), cfg())
    a, b = recs
    assert a["end"] == pytest.approx((P100 + 2 * D100) / 1000)
    assert b["end"] == pytest.approx((2 * P100 + 3 * D100) / 1000)
    assert a["ttft"] == pytest.approx(P100 / 1000)
    assert b["ttft"] == pytest.approx((2 * P100 + 2 * D100) / 1000 - 0.001)
    assert all(r["completed"] and r["tokens"] == r["tokens_wanted"] for r in recs)


def test_multiplexed_unit_overlaps_jobs_by_share():
    # shares 0.5 each, no overload allowance: both prefills fit at once (0.5 + 0.5), each at the
    # 50% latency; then both decodes run side by side. A: P50 + 2 D50; B: 0.001 + P50 + D50.
    recs = simulate(unit("spatial-temporal", (0.5, 0.5)), LLMS,
                    [req("A", "a", 0.0, out=3), req("B", "b", 0.001, out=2)], flat_table(), cfg())
    a, b = recs
    assert a["end"] == pytest.approx((P50 + 2 * D50) / 1000)
    assert b["end"] == pytest.approx(0.001 + (P50 + D50) / 1000)
    # whole-unit shares cannot overlap (1.0 + 1.0 > 1.0): B's prefill waits for A's
    a, b = simulate(unit("spatial-temporal", (1.0, 1.0)), LLMS,
                    [req("A", "a", 0.0, out=3), req("B", "b", 0.001, out=2)], flat_table(), cfg())
    assert b["ttft"] > P100 / 1000


def test_deterministic_for_a_seed():
    reqs = workload.generate_rates({"a": 30.0, "b": 10.0}, 2.0, seed=7, prompt_mean=16, output_mean=8)
    assert reqs == workload.generate_rates({"a": 30.0, "b": 10.0}, 2.0, seed=7, prompt_mean=16, output_mean=8)
    assert reqs != workload.generate_rates({"a": 30.0, "b": 10.0}, 2.0, seed=8, prompt_mean=16, output_mean=8)
    runs = [simulate(unit("spatial-temporal", (0.5, 0.5)), LLMS, reqs, flat_table(), cfg()) for _ in range(2)]
    assert runs[0] == runs[1]
    assert all(r["completed"] for r in runs[0])


def test_preemption_when_the_pool_is_short():
    # 6 sim blocks of 4 tokens for one LLM: three 4-token prompts fit, their growth does not
    reqs = [req(f"q{i}", "a", 0.0, prompt=4, out=6) for i in range(3)]
    place = unit("spatial-temporal", (0.5, 0.5), names=("a",))
    u = SimUnit(place.units[0], LLMS, flat_table(), cfg(num_blocks=6 * 64 * 4 // 256))
    assert u.blocks.capacity == 6
    sim = Simulation(place, LLMS, flat_table(), cfg(num_blocks=6))
    recs = sim.run(reqs)
    assert all(r["completed"] and r["tokens"] == 6 for r in recs)
    assert sim.preemptions >= 1
    sim.units[0].blocks.check_integrity(sim.units[0].scheduler.all_seqs())
    assert sim.units[0].blocks.usage == {"a": 0}  # every block came back


def test_adbs_moves_quota_to_the_saturated_llm():
    place = unit("spatial-temporal", (0.5, 0.5))
    u = SimUnit(place.units[0], LLMS, flat_table(), cfg(num_blocks=40, quota=QuotaPolicy(adapt_interval_s=1)))
    assert u.blocks.quotas == {"a": 20, "b": 20}
    for i in range(12):  # 2 blocks each: 10 fit a's quota of 20
        u.add(Sequence(i, f"q{i}", "a", [0] * 8, SamplingParams(max_tokens=4, ignore_eos=True), arrival=0.0))
    u.dispatch(0.0)  # a's prefill takes what its quota allows; the rest wait
    assert u.scheduler.waiting["a"] and u.blocks.usage["a"] >= 0.9 * u.blocks.quotas["a"]
    u.adapt_quotas()
    assert u.blocks.quotas["a"] > 20 and u.blocks.quotas["b"] < 20 and sum(u.blocks.quotas.values()) == 40


def test_cpu_unit_one_dispatch_per_core():
    # device cpu: the unit's devices are cores; a 0.5 share wants one of the two cores, free cores are spread
    place = Placement("t", 0.0, [Unit("u0x2", [0, 1], [LLMPlacement("a", 0.5, 0.5)])])
    table = CostTable({"a": {"2": flat_table(("a",))._raw["a"]["1"]}})
    (r,) = simulate(place, LLMS, [req("A", "a", 0.0, out=2)], table, cfg(device="cpu"))
    assert r["end"] == pytest.approx((P100 + D100) / 1000)  # alone, each job got both cores


def test_cpu_host_work_per_token_by_hand():
    # h CPU seconds of host work per sampled token land on the busy cores: a dispatch of c cores sampling
    # s tokens while a fraction f of the machine's cores is busy lasts h * s * f / c longer
    h = 0.004
    table = CostTable({"a": {"2": flat_table(("a",))._raw["a"]["1"]}})
    place = Placement("t", 0.0, [Unit("u0x2", [0, 1], [LLMPlacement("a", 0.5, 0.5)])])
    (r,) = simulate(place, LLMS, [req("A", "a", 0.0, out=2)], table, cfg(device="cpu", host_cpu_s_per_token=h))
    assert r["end"] == pytest.approx((P100 + D100) / 1000 + 2 * h / 2)  # both cores busy, 2 dispatches of 1 token
    # two 1-core units on one machine: alone, half its cores are idle and take half the host work ...
    two = Placement("t", 0.0, [Unit("u0x1", [0], [LLMPlacement("a", 1.0, 1.0)]),
                               Unit("u1x1", [1], [LLMPlacement("b", 1.0, 1.0)])])
    (r,) = simulate(two, LLMS, [req("A", "a", 0.0, out=2)], flat_table(), cfg(device="cpu", host_cpu_s_per_token=h))
    assert r["end"] == pytest.approx((P100 + D100) / 1000 + 2 * h / 2)
    # ... while the other unit is busy (B, 1 us ahead, keeps its core through both of A's dispatches: its
    # prefill ends at P + h/2, its decode starts then and lasts D + h), A's core takes all its host work
    b, a = simulate(two, LLMS, [req("B", "b", 0.0, out=2), req("A", "a", 1e-6, out=2)], flat_table(),
                    cfg(device="cpu", host_cpu_s_per_token=h))
    assert a["end"] == pytest.approx(1e-6 + (P100 + D100) / 1000 + 2 * h)
    assert b["end"] == pytest.approx((P100 + D100) / 1000 + h / 2 + h)


def test_metrics_of_simulated_records():
    recs = simulate(unit("temporal"), LLMS, [req("A", "a", 0.0, out=3), req("B", "b", 0.001, out=2)],
                    flat_table(), cfg())
    base = {"a": {"ttft": P100 / 1000, "tpot": D100 / 1000}, "b": {"ttft": P100 / 1000, "tpot": D100 / 1000}}
    s = metrics.summarize(recs, base, ["a", "b"])
    assert s["completed"] == 2 and s["throughput_rps"] == pytest.approx(2 / ((2 * P100 + 3 * D100) / 1000))
    # A took exactly its alone latency; B (alone: P + D = 12 ms) took 2P + 3D - 1 ms = 25 ms
    assert (s["slo"][1], s["slo"][2], s["slo"][3]) == (0.5, 0.5, 1.0)
    a, b = s["per_model"]["a"], s["per_model"]["b"]
    assert (a["requests"], a["completed"], a["slo"][1], b["slo"][2], b["slo"][3]) == (1, 1, 1.0, 0.0, 1.0)
    assert b["ttft_p50"] == pytest.approx((2 * P100 + 2 * D100) / 1000 - 0.001)  # FCFS: A ran to its end first


def test_unhosted_model_is_an_error():
    with pytest.raises(ValueError, match="hosts"):
        simulate(unit("temporal", names=("a",)), LLMS, [req("B", "b", 0.0)], flat_table(), cfg())


def test_simulate_command_on_a_config(capsys, tmp_path, hand_table_file):
    cfg = {"models": [{"name": "a", "size": "llama-7b", "rate": 4, "cost_key": "tiny"},
                      {"name": "b", "size": "llama-7b", "rate": 1, "cost_key": "tiny"}],
           "cluster": {"device": "cuda", "nodes": 1, "devices_per_node": 2},
           "placer": {"cost_table": str(hand_table_file), "device_memory_gb": 80, "avg_prompt_len": 16,
                      "avg_output_len": 8},
           "worker": {"engine": {"max_num_seqs": 8}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for policy in ("muxserve", "temporal", "spatial"):
        assert simulate_main(["--config", str(path), "--policy", policy, "--duration", "5", "--json"]) == 0
        d = json.loads(capsys.readouterr().out)
        assert d["policy"] == policy and d["requests"] > 10 and d["completed"] == d["requests"]
        assert 0 < d["slo"]["8"] <= 1 and d["throughput_rps"] > 0
    assert simulate_main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert simulate_main(["--config", str(path), "--policy", "spatial-paper"]) == 2
    assert "needs --preset" in capsys.readouterr().err


def test_by_simulation_keeps_the_candidate_that_serves_more():
    from services.placer.simulator.choose import by_simulation

    # decode is memory-bound (as fast at 50% as at 100%), so two decode jobs side by side serve twice
    # what one-at-a-time does; under a load past the temporal unit's capacity the simulator must see it
    def cells(p, d):
        return {str(b): {str(q): {"prefill": p, "decoding": d} for q in (8, 4096)} for b in (1, 256)}
    table = CostTable({k: {"1": {"50": cells(2.0, 20.0), "100": cells(1.0, 20.0)}} for k in ("a", "b")})
    llms = {n: SimLLM(n, n, 0, 64, 40.0) for n in ("a", "b")}
    temporal, shared = unit("temporal"), unit("spatial-temporal", (0.5, 0.5))
    chosen, scores = by_simulation([temporal, shared], llms, table, cfg(max_num_seqs=4), (8, 16), duration_s=4)
    assert chosen is shared
    assert scores[1]["steady_throughput_rps"] > 1.5 * scores[0]["steady_throughput_rps"]
    chosen, _ = by_simulation([shared, temporal], llms, table, cfg(max_num_seqs=4), (8, 16), duration_s=4)
    assert chosen is shared  # not the first by position


def test_plan_command_with_the_simulator_in_the_loop(capsys, tmp_path, hand_table_file):
    from services.placer.cli import plan_main

    cfg = {"models": [{"name": "a", "size": "llama-7b", "rate": 4, "cost_key": "tiny"},
                      {"name": "b", "size": "llama-7b", "rate": 1, "cost_key": "tiny"}],
           "cluster": {"device": "cuda", "nodes": 1, "devices_per_node": 2},
           "placer": {"cost_table": str(hand_table_file), "device_memory_gb": 80, "avg_prompt_len": 16,
                      "avg_output_len": 8}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert plan_main(["--config", str(path), "--simulate", "3", "--capacity", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert sorted(m["name"] for u in d["units"] for m in u["llms"]) == ["a", "b"] and d["capacity_scale"] > 0


def test_the_papers_temporal_baseline_keeps_muxserves_colocation():
    """same_colocation_temporal: the same units, devices and LLMs per unit as the MuxServe placement,
    every unit temporal with shares 1.0; served, it runs one dispatch at a time (the hand-checked
    temporal makespan above), where the MuxServe unit overlaps the two LLMs."""
    from services.placer.simulator.scenarios import same_colocation_temporal

    mux = unit("spatial-temporal", (0.5, 0.5))
    tm = same_colocation_temporal(mux)
    assert [(u.unit_id, u.devices, u.llm_names) for u in tm.units] == \
        [(u.unit_id, u.devices, u.llm_names) for u in mux.units]
    assert {u.mode for u in tm.units} == {"temporal"} and mux.units[0].mode == "spatial-temporal"
    assert all(m.prefill_share == m.decode_share == 1.0 for u in tm.units for m in u.llms)
    reqs = [req("A", "a", 0.0, out=3), req("B", "b", 0.001, out=2)]
    a, b = simulate(tm, LLMS, reqs, flat_table(), cfg())
    assert b["end"] == pytest.approx((2 * P100 + 3 * D100) / 1000)  # one job at a time, FCFS


def test_sim_config_takes_the_mesh_engine_keys(tmp_path):
    from types import SimpleNamespace

    from muxserve import config as mconfig
    from services.placer.simulator.cli import sim_config

    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "a", "path": str(tmp_path)}],
                                    "cluster": {"device": "cpu", "devices_per_node": 2}, "worker": {"engine": {
        "decode_deadline_scale": 0, "spread_cores": False, "max_prefill_tokens": 64}}}))
    pcfg = SimpleNamespace(device_memory_gb=1, memory_utilization=0.9)
    sim = sim_config(mconfig.load(path, serve=False), pcfg)
    assert (sim.decode_deadline_scale, sim.spread_cores, sim.max_prefill_tokens) == (0.0, False, 64)
    u = SimUnit(unit("spatial-temporal", (0.5, 0.5)).units[0], LLMS, flat_table(), replace(sim, num_blocks=40))
    assert u.scheduler.order.scale == 0.0 and u.budget.spreads is False, "the unit runs with them"
