"""The deployment config: one YAML file shared by all services, plus environment overrides.

Every key, its type and default is in `muxserve/settings.py` (`muxserve config --print-defaults` prints
them all); this module loads a file into a `MeshConfig`. Only `models` is required:

    redis_url: redis://127.0.0.1:6379/0
    models: [{name: tiny-llama, path: models/tiny-llama, rate: 1.0}]   # path: relative to the file
    cluster: {device: cpu, nodes: 1, devices_per_node: 2}
    router: {host: 127.0.0.1, port: 50051}   # and placer, memmgr, worker sections

Environment overrides, highest first: any key as MUXSERVE_<SECTION>__<KEY>[__<SUBKEY>] (for example
MUXSERVE_WORKER__ENGINE__BLOCK_SIZE=16; lists and mappings as JSON), MUXSERVE_REDIS_URL,
MUXSERVE_INTERNAL_TOKEN, MUXSERVE_<SERVICE>_HOST / _PORT, MUXSERVE_WORKER_ID and MUXSERVE_API_KEY (added to
router.api_keys). MUXSERVE_<SERVICE>_ADDRESS (e.g. MUXSERVE_PLACER_ADDRESS) sets where the others reach a
service. Errors are one-line `ConfigError`s naming the dotted key (config_errors.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from muxserve.config_errors import ConfigError, describe
from muxserve.settings import Drain, MeshSettings

SERVICES = ("router", "placer", "memmgr", "worker")
DEFAULT_PORTS = {"router": 50051, "placer": 50052, "memmgr": 50053, "worker": 50060}
__all__ = ["ConfigError", "MeshConfig", "ModelSpec", "ClusterSpec", "from_dict", "load", "SERVICES"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: str
    rate: float = 1.0


@dataclass(frozen=True)
class ClusterSpec:
    device: str = "cpu"
    nodes: int = 1
    devices_per_node: int = 2


@dataclass
class MeshConfig:
    """What every service needs to find the others and the models; `settings` is the validated whole."""

    models: list[ModelSpec]
    redis_url: str = "redis://127.0.0.1:6379/0"
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    raw: dict = field(default_factory=dict)  # the parsed YAML as written (placer: `size`, `cost_key`)
    settings: MeshSettings | None = None
    addresses: dict[str, str] = field(default_factory=dict)  # MUXSERVE_<SERVICE>_ADDRESS at load

    def section(self, service: str):
        """The service's validated section (muxserve.settings), environment overrides applied."""
        return getattr(self.settings, service)

    def address(self, service: str) -> str:
        """host:port where other services reach `service` (MUXSERVE_<SERVICE>_ADDRESS overrides)."""
        if self.addresses.get(service):
            return self.addresses[service]
        sec = self.section(service)
        host = sec.host if sec.host not in ("0.0.0.0", "::", "[::]") else "127.0.0.1"
        return f"{host}:{sec.port}"

    def drain(self, service: str) -> Drain:
        """The service's drain settings: its own `drain`, else the mesh-wide one."""
        return self.section(service).drain or self.settings.drain

    @property
    def internal_token(self) -> str | None:
        return self.settings.internal_token

    def model(self, name: str) -> ModelSpec | None:
        return next((m for m in self.models if m.name == name), None)


class _EnvSettings(BaseSettings, MeshSettings):
    """MeshSettings whose values MUXSERVE_<SECTION>__<KEY> variables override (pydantic-settings)."""

    model_config = SettingsConfigDict(env_prefix="MUXSERVE_", env_nested_delimiter="__", extra="forbid",
                                      validate_assignment=True, coerce_numbers_to_str=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (env_settings, init_settings)  # the environment wins over the file


def _named_env(raw: dict, env: Mapping[str, str]) -> dict:
    """`raw` with the named MUXSERVE_* variables (module docstring) applied."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for service in SERVICES:
        for key in ("host", "port"):
            value = env.get(f"MUXSERVE_{service.upper()}_{key.upper()}")
            if value:
                out[service] = {**(out.get(service) or {}), key: value}
    for key, name in (("redis_url", "MUXSERVE_REDIS_URL"), ("internal_token", "MUXSERVE_INTERNAL_TOKEN")):
        if env.get(name):
            out[key] = env[name]
    if env.get("MUXSERVE_WORKER_ID"):
        out["worker"] = {**(out.get("worker") or {}), "worker_id": env["MUXSERVE_WORKER_ID"]}
    if env.get("MUXSERVE_API_KEY"):
        router = dict(out.get("router") or {})
        keys = router.get("api_keys") or []
        router["api_keys"] = [*keys, env["MUXSERVE_API_KEY"]] if isinstance(keys, list) else keys
        out["router"] = router
    return out


def validate(raw: dict, env: Mapping[str, str] | None = None) -> MeshSettings:
    """The MeshSettings of parsed YAML with the environment applied; ConfigError (one line) when invalid.

    env None: the process environment, every MUXSERVE_* variable of the module docstring; a mapping (tests):
    only its named variables (not the MUXSERVE_<SECTION>__<KEY> ones)."""
    if not isinstance(raw, dict):
        raise ConfigError("config must be a mapping of sections (redis_url, models, cluster, router, ...)")
    try:
        if env is None:
            return _EnvSettings(**_named_env(raw, os.environ))
        return MeshSettings.model_validate(_named_env(raw, env))
    except ValidationError as e:
        raise ConfigError(describe(e, MeshSettings)) from None


def _model_specs(settings: MeshSettings, base: Path) -> list[ModelSpec]:
    out = []
    for i, m in enumerate(settings.models):
        if not m.path:
            raise ConfigError(f"models[{i}] ({m.name}): `path` is needed to serve it (`size` is for muxserve plan)")
        path = Path(os.path.expanduser(m.path))
        out.append(ModelSpec(m.name, str(path if path.is_absolute() else base / path), m.rate))
    return out


def from_dict(raw: dict, base: Path | str = ".", env: Mapping[str, str] | None = None,
              serve: bool = True) -> MeshConfig:
    """Build a MeshConfig from parsed YAML; relative model paths resolve against `base`.

    serve=False (muxserve plan, simulate) accepts models given by `size` only (they get no ModelSpec)."""
    s = validate(raw, env)
    env = os.environ if env is None else env
    base = Path(base).resolve()
    models = _model_specs(s, base) if serve else [ModelSpec(m.name, m.path or "", m.rate) for m in s.models]
    cluster = ClusterSpec(s.cluster.device, s.cluster.nodes, s.cluster.devices_per_node or os.cpu_count() or 1)
    addresses = {svc: env[f"MUXSERVE_{svc.upper()}_ADDRESS"] for svc in SERVICES
                 if env.get(f"MUXSERVE_{svc.upper()}_ADDRESS")}
    return MeshConfig(models, s.redis_url, cluster, raw, s, addresses)


def read_yaml(path: str | Path) -> dict:
    """The parsed YAML at `path`; ConfigError (one line) when missing, unreadable or not YAML."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    return raw or {}


def load(path: str | Path, serve: bool = True) -> MeshConfig:
    """Read and validate the YAML config at `path`."""
    return from_dict(read_yaml(path), Path(path).parent, serve=serve)


def section_of(cls, sec, name: str):
    """`sec` as the validated section model `cls` (a dict is validated; errors name `name.<key>`)."""
    if isinstance(sec, cls):
        return sec
    try:
        return cls.model_validate(sec or {})
    except ValidationError as e:
        raise ConfigError(describe(e, cls, (name,))) from None
