"""docker-compose.yml is consistent with the code (no Docker engine runs here, so check its structure)."""

import shlex
from pathlib import Path

import yaml

from muxserve import cli
from muxserve import config as cfg

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def _arg(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_every_muxserve_service_present_with_healthcheck():
    assert set(SERVICES) == {"redis", "placer", "memmgr", "worker", "router"}
    for name, svc in SERVICES.items():
        assert "healthcheck" in svc, f"{name} has no healthcheck"


def test_commands_exist_and_ports_agree_with_healthchecks():
    for name in cli.SERVICES:
        svc = SERVICES[name]
        cmd = svc["command"]
        assert cmd[0] == name and cmd[0] in cli.SERVICES
        port = _arg(cmd, "--port")
        assert svc["healthcheck"]["test"][-1] == f"127.0.0.1:{port}"
        config_in_container = _arg(cmd, "--config")
        mounts = {m.split(":")[1]: m.split(":")[0] for m in svc["volumes"]}
        assert (ROOT / mounts[config_in_container]).exists()
        exposed = [str(p) for p in svc.get("expose", [])] + [p.split(":")[-1] for p in svc.get("ports", [])]
        assert port in exposed, f"{name} listens on {port} but exposes {exposed}"


def test_addresses_in_env_point_at_compose_services():
    env = SERVICES["router"]["environment"]
    for key, service in (("MUXSERVE_PLACER_ADDRESS", "placer"), ("MUXSERVE_MEMMGR_ADDRESS", "memmgr")):
        host, port = env[key].split(":")
        assert host == service and port == _arg(SERVICES[service]["command"], "--port")
    assert env["MUXSERVE_REDIS_URL"].startswith("redis://redis:")


def test_depends_on_health_and_router_scalable():
    for name in cli.SERVICES:
        for dep, cond in SERVICES[name]["depends_on"].items():
            assert dep in SERVICES and cond == {"condition": "service_healthy"}
    router = SERVICES["router"]
    assert "container_name" not in router  # --scale router=3 needs generated names
    host_ports = router["ports"][0].split(":")[0]
    lo, hi = (int(x) for x in host_ports.split("-"))
    assert hi - lo + 1 >= 3, "router host port range must admit --scale router=3"


def test_compose_config_loads_and_models_exist_in_image():
    mesh = cfg.load(ROOT / "examples" / "compose.yaml")
    dockerfile = (ROOT / "Dockerfile").read_text()
    for model in mesh.models:
        assert model.path in dockerfile, f"{model.path} is not written in the image"
    assert "ENTRYPOINT [\"muxserve\"]" in dockerfile
    assert "torch==2.13.0" in shlex.split(dockerfile.replace("\\\n", " "))
