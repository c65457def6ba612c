"""The placer's config: its section of the shared YAML, validated once when built.

Keys of the `placer:` section (all optional):

    policy: muxserve            # muxserve | spatial | temporal
    cost_table: null            # JSON cost table (profiler format); default: the A100 LLaMA table. A model
                                # whose cost key it lacks gets an analytic estimate (analytic.py, logged)
    gpu: auto                   # the GPU the analytic estimate prices (cluster.device cuda): auto (nvidia-smi)
                                # or one of devices.KNOWN_GPUS: A100-40GB, A100-80GB, H100, H100-PCIe, H200, L4,
                                # L40S; on CPU the estimate probes this machine once (devices.py)
    probe_cache: null           # folder the CPU probe's result is kept in (default ~/.cache/muxserve)
    device_memory_gb: null      # per device; default 80 on cuda, (RAM / devices) on cpu
    memory_utilization: 0.9     # fraction of device memory usable for weights + KV
    avg_prompt_len: 161         # workload the estimate assumes (tokens per request)
    avg_output_len: 337
    prefill_token_budget: 2048  # tokens per prefill batch
    window_s: 60                # observed-rate window in Redis
    observed_weight: 0.7        # blended rate = w * observed + (1 - w) * prior (priors alone if no traffic)
    interval_s: 5               # how often re-placement checks drift
    drift_threshold: 0.3        # sum |rate - planned| / sum planned, to count as drift
    sustain_s: 15               # drift must last this long before recomputing
    min_gain: 0.05              # switch only if the new objective is this fraction better ...
    horizon_s: 600              # ... and the gain over this horizon beats the cost of moving
    load_time_s: 30             # estimated seconds to load one LLM (requests it delays = rate x this)
    worker_ttl_s: 30            # a worker not re-registered for this long is gone
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from muxserve.config import ConfigError, MeshConfig

POLICIES = ("muxserve", "spatial", "temporal")
DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_COST_TABLE = DATA_DIR / "a100-llama-cost.json"  # MuxServe authors' A100 table (data/README.md)


@dataclass(frozen=True)
class Workload:
    """Average request shape the estimator assumes."""

    prompt_len: int = 161
    output_len: int = 337
    prefill_token_budget: int = 2048


@dataclass(frozen=True)
class PlacerConfig:
    policy: str = "muxserve"
    cost_table: str | None = None
    gpu: str = "auto"
    probe_cache: str | None = None
    device_memory_gb: float = 80.0
    memory_utilization: float = 0.9
    avg_prompt_len: int = 161
    avg_output_len: int = 337
    prefill_token_budget: int = 2048
    window_s: float = 60.0
    observed_weight: float = 0.7
    interval_s: float = 5.0
    drift_threshold: float = 0.3
    sustain_s: float = 15.0
    min_gain: float = 0.05
    horizon_s: float = 600.0
    load_time_s: float = 30.0
    worker_ttl_s: float = 30.0
    host: str = "127.0.0.1"
    port: int = 50052

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"placer.policy must be one of {POLICIES}, got {self.policy!r}")
        for name in ("device_memory_gb", "avg_prompt_len", "avg_output_len", "prefill_token_budget",
                     "window_s", "interval_s", "horizon_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"placer.{name} must be > 0, got {getattr(self, name)}")
        from .devices import KNOWN_GPUS

        if self.gpu != "auto" and self.gpu not in KNOWN_GPUS:
            raise ConfigError(f"placer.gpu must be auto or one of {sorted(KNOWN_GPUS)}, got {self.gpu!r}")
        if not 0 < self.memory_utilization <= 1:
            raise ConfigError(f"placer.memory_utilization must be in (0, 1], got {self.memory_utilization}")
        if not 0 <= self.observed_weight <= 1:
            raise ConfigError(f"placer.observed_weight must be in [0, 1], got {self.observed_weight}")

    @property
    def workload(self) -> Workload:
        return Workload(self.avg_prompt_len, self.avg_output_len, self.prefill_token_budget)

    @property
    def cost_table_path(self) -> Path:
        return Path(self.cost_table) if self.cost_table else DEFAULT_COST_TABLE

    @classmethod
    def from_section(cls, section: dict, mesh: MeshConfig | None = None,
                     base: str | Path | None = None) -> "PlacerConfig":
        """Build from `mesh.section("placer")`; unknown keys are an error naming them.

        A relative `cost_table` resolves against `base` (the config file's folder) when given.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"placer: unknown keys {unknown}")
        values = dict(section)
        if values.get("device_memory_gb") is None:
            values["device_memory_gb"] = _default_memory_gb(mesh)
        if values.get("cost_table") and base is not None:
            values["cost_table"] = str(Path(base) / os.path.expanduser(values["cost_table"]))
        try:
            return cls(**{k: _coerce(cls, k, v) for k, v in values.items()})
        except (TypeError, ValueError) as e:
            raise ConfigError(f"placer: {e}") from None


def _coerce(cls, key: str, value):
    typ = {f.name: f.type for f in fields(cls)}[key]
    if value is None:
        return value
    if typ in ("float",):
        return float(value)
    if typ in ("int",):
        return int(value)
    return value


def _default_memory_gb(mesh: MeshConfig | None) -> float:
    if mesh is None or mesh.cluster.device == "cuda":
        return 80.0
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total / max(1, mesh.cluster.devices_per_node) / 2**30
