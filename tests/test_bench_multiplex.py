"""bench/multiplex.py's per-policy engine keys and policy labels reach a config the mesh accepts."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import multiplex  # noqa: E402
import multiplex_report  # noqa: E402

from muxserve import config as cfg  # noqa: E402
from services.worker.config import WorkerConfig  # noqa: E402
from services.worker.engine.config import EngineConfig  # noqa: E402


def test_engine_keys_apply_to_every_policy_or_to_the_one_named():
    items = ["omp_spin_count=0", "muxserve#a:overload_allowance=0.5", "temporal:max_num_seqs=8"]
    assert multiplex.engine_keys(items, "muxserve#a") == {"omp_spin_count": 0, "overload_allowance": 0.5}
    assert multiplex.engine_keys(items, "muxserve") == {"omp_spin_count": 0}
    assert multiplex.engine_keys(items, "temporal") == {"omp_spin_count": 0, "max_num_seqs": 8}
    assert multiplex.engine_keys(items, "temporal#r2") == {"omp_spin_count": 0, "max_num_seqs": 8}, "NAME's reach NAME#L"
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        multiplex.engine_keys(["muxserve:omp_spin_count"], "muxserve")


def test_a_labelled_policy_plans_as_its_policy_with_its_own_keys(tmp_path):
    keys = multiplex.engine_keys(["muxserve#a:omp_spin_count=0"], "muxserve#a")
    path = multiplex.write_config(tmp_path, "muxserve#a", {"big": 1.0, "small": 0.5}, tmp_path / "cost.json",
                                  1000, (64, 32), engine=keys)
    mesh = cfg.load(str(path))
    assert mesh.section("placer").policy == "muxserve"
    wcfg = WorkerConfig.from_section(mesh.section("worker"), "w0")  # what the worker builds its engine from
    engine = EngineConfig.from_section(wcfg.engine_section(mesh.cluster.device))
    assert engine.omp_spin_count == 0 and engine.num_blocks == 1000 and engine.job_mode == "process"


def _plan(decode_share: float, est: float) -> dict:
    return {"units": [{"devices": [0, 1], "mode": "spatial-temporal", "est_throughput": est, "llms": [
        {"name": "big", "prefill_share": 0.95, "decode_share": decode_share, "est_throughput": est}]}],
            "objective": est}


def test_the_host_term_may_change_the_estimate_but_not_the_layout_the_mesh_ran():
    assert multiplex.same_layout(_plan(0.67, 13.2), _plan(0.67, 19.0))["objective"] == 19.0
    with pytest.raises(SystemExit, match="changed the layout"):
        multiplex.same_layout(_plan(0.67, 13.2), _plan(0.5, 19.0))


def test_the_calibration_burst_is_not_a_list_that_is_compared():
    args = multiplex.argparse.Namespace(alpha=1.9, rate=24.0, requests=40, seed=0, prompt_mean=64, output_mean=32,
                                        calibration_requests=40)
    compared = {(r.model, tuple(r.prompt_ids)) for r in multiplex.make_lists(args, [24.0])[24.0]}
    burst = multiplex.calibration_list(args)
    assert len(burst) == 40 and not compared & {(r.model, tuple(r.prompt_ids)) for r in burst}


def test_repeats_interleave_and_each_gets_its_own_ratios():
    assert multiplex.repeated(["spatial", "muxserve"], 3) == [
        "spatial", "muxserve", "spatial#r2", "muxserve#r2", "spatial#r3", "muxserve#r3"]
    head = {p: {"throughput_rps": t, "rate_at_99pct_slo8": r} for p, t, r in [
        ("spatial", 10.0, 8.0), ("muxserve", 12.0, 12.0), ("spatial#r2", 10.0, 0.0), ("muxserve#r2", 15.0, 9.0)]}
    assert multiplex_report.ratios(head, "") == {"muxserve/spatial": {"throughput": 1.2, "rate_at_slo": 1.5}}
    assert multiplex_report.ratios(head, "r2") == {"muxserve/spatial": {"throughput": 1.5, "rate_at_slo": None}}


def test_the_big_shape_can_be_set_and_a_work_folder_of_another_shape_is_refused(tmp_path):
    shapes = multiplex.model_shapes("hidden_size=128,num_layers=2")
    assert shapes["big"]["hidden_size"] == 128 and shapes["big"]["num_layers"] == 2
    assert shapes["small"] == multiplex.MODELS["small"] and multiplex.MODELS["big"]["hidden_size"] == 512
    with pytest.raises(SystemExit, match="KEY=INTEGER"):
        multiplex.model_shapes("hidden=128")
    small = {"big": dict(shapes["big"], intermediate_size=256), "small": dict(shapes["small"], hidden_size=64,
                                                                              intermediate_size=128)}
    cost = tmp_path / "given.json"
    assert multiplex.prepare_models(tmp_path, cost, small) == cost  # writes the checkpoints, profiles nothing
    assert multiplex.prepare_models(tmp_path, cost, small) == cost  # the same shapes: taken as they are
    with pytest.raises(SystemExit, match="another shape"):
        multiplex.prepare_models(tmp_path, cost, dict(small, big=dict(small["big"], num_layers=3)))
