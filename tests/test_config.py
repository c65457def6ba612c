import pytest

from muxserve import config as cfg


def test_defaults_and_relative_paths(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("models:\n  - {name: a, path: m/a, rate: 2}\n")
    mesh = cfg.load(f)
    assert mesh.models == [cfg.ModelSpec("a", str(tmp_path / "m" / "a"), 2.0)]
    assert mesh.address("router") == "127.0.0.1:50051"
    assert mesh.section("worker")["port"] == 50060


def test_env_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("MUXSERVE_PLACER_ADDRESS", "placer:1234")
    monkeypatch.setenv("MUXSERVE_ROUTER_PORT", "6000")
    monkeypatch.setenv("MUXSERVE_REDIS_URL", "redis://r:1/0")
    mesh = cfg.from_dict({"models": [{"name": "a", "path": "/x"}]})
    assert mesh.address("placer") == "placer:1234"
    assert mesh.section("router")["port"] == 6000
    assert mesh.redis_url == "redis://r:1/0"


@pytest.mark.parametrize("raw, words", [
    ({}, "models"),
    ({"models": [{"name": "a"}]}, "path"),
    ({"models": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]}, "duplicate"),
    ({"models": [{"name": "a", "path": "x", "rate": -1}]}, "rate"),
    ({"models": [{"name": "a", "path": "x"}], "cluster": {"device": "tpu"}}, "cluster.device"),
])
def test_bad_config_names_the_key(raw, words):
    with pytest.raises(cfg.ConfigError, match=words):
        cfg.from_dict(raw)


def test_missing_file(tmp_path):
    with pytest.raises(cfg.ConfigError, match="not found"):
        cfg.load(tmp_path / "nope.yaml")
