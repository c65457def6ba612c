"""`muxserve plan` / `muxserve profile` entry points, LLM sizes from real checkpoints, paper scale."""

import json
import sys
from pathlib import Path

import pytest
import yaml

from services.placer.cli import plan_main, profile_main
from services.placer.costmodel import CostTable
from services.placer.llmspec import load_specs, spec_from_size

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from placement_scale import paper_config  # noqa: E402


def run(capsys, cfg: dict, tmp_path, *flags) -> tuple[int, str, str]:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc = plan_main(["--config", str(path), *flags])
    out, err = capsys.readouterr()
    return rc, out, err


def small(tmp_path, hand_table_file, **over):
    cfg = {"models": [{"name": "a", "size": "llama-7b", "rate": 4, "cost_key": "tiny"},
                      {"name": "b", "size": "llama-7b", "rate": 1, "cost_key": "tiny"}],
           "cluster": {"device": "cuda", "nodes": 1, "devices_per_node": 2},
           "placer": {"cost_table": str(hand_table_file), "device_memory_gb": 80}}
    cfg.update(over)
    return cfg


@pytest.mark.parametrize("policy", ["muxserve", "spatial", "temporal"])
def test_plan_json(capsys, tmp_path, hand_table_file, policy):
    rc, out, _ = run(capsys, small(tmp_path, hand_table_file), tmp_path, "--policy", policy, "--json")
    assert rc == 0
    d = json.loads(out)
    assert d["policy"] == policy and d["objective"] > 0
    names = sorted(m["name"] for u in d["units"] for m in u["llms"])
    assert names == ["a", "b"]
    for u in d["units"]:
        assert u["devices"]
        for m in u["llms"]:
            assert 0 < m["decode_share"] <= 1 and 0 < m["prefill_share"] <= 1


def test_plan_text(capsys, tmp_path, hand_table_file):
    rc, out, _ = run(capsys, small(tmp_path, hand_table_file), tmp_path)
    assert rc == 0 and out.startswith("policy muxserve: objective")


def test_plan_errors(capsys, tmp_path, hand_table_file):
    cfg = small(tmp_path, hand_table_file, cluster={"device": "cuda", "nodes": 2, "devices_per_node": 1})
    cfg["models"].append({"name": "big", "size": "llama-65b", "rate": 1, "cost_key": "tiny"})
    rc, _, err = run(capsys, cfg, tmp_path)  # 121 GiB of weights, 80 GB devices, units of 1
    assert rc == 2 and "'big'" in err and "fits no unit" in err
    rc, _, err = run(capsys, small(tmp_path, hand_table_file, cluster={"nodes": 0, "devices_per_node": 8}), tmp_path)
    assert rc == 2 and "`cluster.nodes`: Input should be greater than or equal to 1" in err  # the config model
    cfg = small(tmp_path, hand_table_file, placer={"cost_table": str(hand_table_file), "gpu": "B200"})
    rc, _, err = run(capsys, cfg, tmp_path)
    assert rc == 2 and "placer.gpu" in err and "H200" in err
    rc, _, err = run(capsys, small(tmp_path, hand_table_file), tmp_path, "--cost-table", str(tmp_path / "no.json"))
    assert rc == 2 and "not found" in err


def test_model_missing_from_the_table_is_planned_analytically(capsys, tmp_path, hand_table_file, caplog):
    """A cost key the table lacks (issue 13): planned from the model's shape and the GPU's numbers, logged."""
    cfg = small(tmp_path, hand_table_file)
    cfg["models"][0]["cost_key"] = "llama-3b"
    cfg["placer"]["gpu"] = "H100"
    with caplog.at_level("WARNING"):
        rc, out, _ = run(capsys, cfg, tmp_path, "--json")
    assert rc == 0
    placed = {m["name"]: m for u in json.loads(out)["units"] for m in u["llms"]}
    assert sorted(placed) == ["a", "b"] and placed["a"]["est_throughput"] > 0
    assert "ANALYTIC estimate" in caplog.text and "'llama-3b'" in caplog.text and "H100" in caplog.text


def test_sizes_from_checkpoint_and_architecture(tiny_llama):
    (s,) = load_specs({"models": [{"name": "t", "path": str(tiny_llama), "rate": 2}]})
    assert s.weight_bytes == sum(f.stat().st_size for f in Path(tiny_llama).glob("*.safetensors"))
    cfg = json.loads((Path(tiny_llama) / "config.json").read_text())
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    assert s.kv_bytes_per_token == 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head_dim * 4
    assert s.cost_key == "t"
    big = spec_from_size("x", 1, "llama-7b")
    assert 6.6e9 * 2 < big.weight_bytes < 6.8e9 * 2          # LLaMA-7B: 6.7B params, fp16
    assert big.kv_bytes_per_token == 2 * 32 * 32 * 128 * 2


def test_paper_scale_one_alpha(capsys, tmp_path):
    """19 LLMs on 4 x 8 A100 (alpha 0.9); all five alphas and ChatLMSYS: bench/placement_scale.py."""
    cfg = paper_config(0.9)
    objective = {}
    for policy in ("spatial", "temporal", "muxserve"):
        rc, out, err = run(capsys, cfg, tmp_path, "--policy", policy, "--json")
        assert rc == 0, err
        d = json.loads(out)
        assert len([m for u in d["units"] for m in u["llms"]]) == 19
        objective[policy] = d["objective"]
    assert objective["muxserve"] >= objective["spatial"]
    assert objective["muxserve"] >= objective["temporal"]


def test_profile_writes_a_table_the_cost_model_reads(tmp_path, tiny_llama, capsys):
    out = tmp_path / "prof.json"
    rc = profile_main(["--model", str(tiny_llama), "--name", "tiny", "--out", str(out), "--devices", "1",
                       "--shares", "50,100", "--batches", "1,2", "--seqs", "8,16", "--reps", "1"])
    assert rc == 0
    t = CostTable.load(out)
    assert t.device_counts("tiny") == [1]
    cell = json.loads(out.read_text())["tiny"]["1"]["100"]["2"]["16"]
    assert cell["prefill"] > 0 and cell["decoding"] > 0
    assert t.decode_ms("tiny", 1, 1.0, 2, 16) == pytest.approx(cell["decoding"])
    assert profile_main(["--model", str(tmp_path), "--out", str(out)]) == 2
    assert "config.json" in capsys.readouterr().err
