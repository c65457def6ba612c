"""The placer's config, built from the mesh config's validated `placer:` section.

Every key, its type, default and range is in muxserve/settings.py (`Placer`); validated there, once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from muxserve.config import MeshConfig, section_of
from muxserve.settings import POLICIES, Placer

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
    max_replicas: int = 1  # > 1: an LLM no single unit can serve at its rate runs in up to this many units
    host_cpu_ms_per_token: float = 0.0  # CPU clusters: the mesh's own CPU per streamed token (estimator.py)
    host: str = "127.0.0.1"
    port: int = 50052
    device: str = "cuda"  # the cluster's (not a key of the section): "cpu" units are work-conserving
    overload_allowance: float = 0.2  # the engine's (worker.engine, not a key of the section): admission's margin

    @property
    def workload(self) -> Workload:
        return Workload(self.avg_prompt_len, self.avg_output_len, self.prefill_token_budget)

    @property
    def cost_table_path(self) -> Path:
        return Path(self.cost_table) if self.cost_table else DEFAULT_COST_TABLE

    @classmethod
    def from_section(cls, section, mesh: MeshConfig | None = None,
                     base: str | Path | None = None) -> "PlacerConfig":
        """Build from `mesh.section("placer")` (or a dict of its keys, validated as that section).

        A relative `cost_table` resolves against `base` (the config file's folder) when given.
        """
        sec = section_of(Placer, section, "placer")
        values = sec.model_dump(exclude={"drain"})
        if values["device_memory_gb"] is None:
            values["device_memory_gb"] = _default_memory_gb(mesh)
        if values["cost_table"] and base is not None:
            values["cost_table"] = str(Path(base) / os.path.expanduser(values["cost_table"]))
        if mesh is None:
            return cls(**values)
        return cls(**values, device=mesh.cluster.device,
                   overload_allowance=mesh.section("worker").engine.overload_allowance)


def _default_memory_gb(mesh: MeshConfig | None) -> float:
    if mesh is None or mesh.cluster.device == "cuda":
        return 80.0
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total / max(1, mesh.cluster.devices_per_node) / 2**30
