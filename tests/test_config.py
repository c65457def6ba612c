import subprocess
import sys

import pytest
import yaml

from muxserve import config as cfg
from muxserve.config_yaml import defaults_yaml
from services.memmgr.config import MemmgrConfig
from services.placer.config import PlacerConfig
from services.router.config import from_mesh
from services.worker.config import WorkerConfig
from services.worker.engine.config import EngineConfig

MODELS = [{"name": "a", "path": "/x"}]


def test_defaults_and_relative_paths(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("models:\n  - {name: a, path: m/a, rate: 2}\n")
    mesh = cfg.load(f)
    assert mesh.models == [cfg.ModelSpec("a", str(tmp_path / "m" / "a"), 2.0)]
    assert mesh.address("router") == "127.0.0.1:50051"
    assert mesh.section("worker").port == 50060
    assert (mesh.drain("router").pre_stop_s, mesh.drain("router").grace_s) == (0.0, 5.0)


def test_env_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("MUXSERVE_PLACER_ADDRESS", "placer:1234")
    monkeypatch.setenv("MUXSERVE_ROUTER_PORT", "6000")
    monkeypatch.setenv("MUXSERVE_REDIS_URL", "redis://r:1/0")
    monkeypatch.setenv("MUXSERVE_WORKER__ENGINE__BLOCK_SIZE", "16")  # any key, nested with __
    monkeypatch.setenv("MUXSERVE_MEMMGR__QUOTA__THRESHOLD", "0.5")
    monkeypatch.setenv("MUXSERVE_INTERNAL_TOKEN", "s3cret")
    mesh = cfg.from_dict({"models": MODELS, "worker": {"engine": {"num_blocks": 64}}, "router": {"port": 1}})
    assert mesh.address("placer") == "placer:1234"
    assert mesh.section("router").port == 6000  # the environment wins over the file
    assert mesh.redis_url == "redis://r:1/0"
    assert WorkerConfig.from_section(mesh.section("worker")).engine == {"block_size": 16, "num_blocks": 64}
    assert MemmgrConfig.from_section(mesh.section("memmgr")).quota.threshold == 0.5
    assert mesh.internal_token == "s3cret"
    monkeypatch.setenv("MUXSERVE_WORKER__ENGINE__BLOK_SIZE", "16")
    with pytest.raises(cfg.ConfigError, match=r"unknown key `worker.engine.blok_size` \(did you mean "
                                              r"`worker.engine.block_size`\?\)"):
        cfg.from_dict({"models": MODELS})


@pytest.mark.parametrize("raw, words", [
    ({}, "`models` is required"),
    ({"models": [{"name": "a"}]}, r"`models\[0\]`: needs `path`"),
    ({"models": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]}, "duplicate name 'a'"),
    ({"models": [{"name": "a", "path": "x", "rate": -1}]}, r"`models\[0\].rate`: Input should be greater"),
    ({"models": MODELS, "cluster": {"device": "tpu"}}, "`cluster.device`: Input should be 'cpu' or 'cuda'"),
    ({"models": MODELS, "router": {"port": "abc"}}, r"`router.port`: Input should be a valid integer.*'abc'"),
    ({"models": MODELS, "worker": {"engine": {"blok_size": 16}}},
     r"^unknown key `worker.engine.blok_size` \(did you mean `worker.engine.block_size`\?\)$"),
    ({"models": MODELS, "routr": {}}, r"unknown key `routr` \(did you mean `router`\?\)"),
    ({"models": MODELS, "memmgr": {"pools": [{"head_dim": 8, "dtype": "float32"}]}},
     r"`memmgr.pools\[0\]`: needs exactly one of num_blocks or bytes"),
    ({"models": MODELS, "worker": {"engine": {"block_size": 0}}}, "`worker.engine`: block_size must be >= 1"),
    ({"models": MODELS, "worker": {"leases": {"low_token_blocks": 30}}}, "low_token_blocks must be <"),
    ({"models": MODELS, "router": {"workers": {"b": ["h:1"]}}}, "router.workers: 'b' is not in `models`"),
    ({"models": MODELS, "drain": {"grace_s": -1}}, "`drain.grace_s`: Input should be greater than or equal"),
])
def test_bad_config_names_the_key(raw, words):
    with pytest.raises(cfg.ConfigError, match=words) as e:
        cfg.from_dict(raw, env={})
    assert "\n" not in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(cfg.ConfigError, match="not found"):
        cfg.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(cfg.ConfigError, match="not valid YAML"):
        cfg.load(bad)


def test_every_service_config_comes_from_the_one_model():
    """Per-service objects take the validated sections; dicts given to them are validated the same way."""
    mesh = cfg.from_dict({"models": MODELS, "placer": {"policy": "spatial"}, "memmgr": {"block_size": 8},
                          "router": {"http_port": -1},
                          "worker": {"kv": "local", "engine": {"dtype": "bfloat16", "overload_allowance": 0.3}}},
                         env={})
    placer = PlacerConfig.from_section(mesh.section("placer"), mesh)
    assert (placer.policy, placer.overload_allowance) == ("spatial", 0.3)  # the engine's margin, for the estimate
    assert MemmgrConfig.from_section(mesh.section("memmgr")).block_size == 8
    assert from_mesh(mesh).http_port == -1
    wcfg = WorkerConfig.from_section(mesh.section("worker"))
    engine = EngineConfig.from_section(wcfg.engine_section("cuda"))
    assert (engine.dtype, engine.device, engine.job_mode) == ("bfloat16", "cuda", "process")
    with pytest.raises(cfg.ConfigError, match=r"unknown key `placer.polcy` \(did you mean `placer.policy`"):
        PlacerConfig.from_section({"polcy": "spatial"})
    with pytest.raises(cfg.ConfigError, match="`engine.job_mode`"):
        EngineConfig.from_section({"job_mode": 3.5j})
    assert EngineConfig(block_size=8).job_mode == "thread"  # in code, without the mesh


def test_print_defaults_loads_back(tmp_path):
    text = defaults_yaml()
    raw = yaml.safe_load(text)
    mesh = cfg.from_dict(raw, tmp_path, env={})
    default = cfg.from_dict({"models": MODELS}, env={}).settings
    assert mesh.settings.model_dump(exclude={"models"}) == default.model_dump(exclude={"models"})
    assert "block_size: 32  # tokens per head-wise block" in text and "grace_s: 5.0" in text


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "muxserve.cli", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_cli_config_errors_exit_2_with_one_line(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"models": MODELS, "worker": {"engine": {"blok_size": 16}}}))
    for args, words in ((("up", "--config", str(tmp_path / "nonexistent.yaml")), "config file not found"),
                        (("router", "--config", str(typo)), "did you mean `worker.engine.block_size`")):
        r = _cli(*args)
        assert r.returncode == 2, r.stderr
        assert words in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("config", "--print-defaults")
    assert r.returncode == 0 and yaml.safe_load(r.stdout)["worker"]["engine"]["block_size"] == 32
