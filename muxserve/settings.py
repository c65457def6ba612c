"""The one configuration model of the mesh: every key, its type, default and meaning (pydantic v2).

The YAML file, `MUXSERVE_*` environment variables and the per-service config objects all go through
`MeshSettings`; nothing else validates a key. Every section forbids unknown keys. `muxserve config
--print-defaults` prints this model as YAML (muxserve/config_yaml.py). Loading, environment overrides
and error messages: muxserve/config.py. The engine's keys are EngineConfig's own fields
(services/worker/engine/config.py, which also checks their ranges, so that the engine built in code
without the mesh checks them the same way).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from services.worker.engine.config import EngineConfig, EngineConfigError

MEMMGR_DTYPES = Literal["float32", "float16", "bfloat16"]
POLICIES = ("muxserve", "spatial", "temporal")


class Section(BaseModel):
    """A config section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


class Drain(Section):
    """What a service does on SIGTERM: NOT_SERVING at once, then wait, then let running RPCs finish."""

    pre_stop_s: float = Field(0.0, ge=0, description="NOT_SERVING this long before the server stops taking "
                                                     "new RPCs (a load balancer's window)")
    grace_s: float = Field(5.0, ge=0, description="then running RPCs (streams) get this long to finish")


class Service(Section):
    host: str = Field("127.0.0.1", description="listen host (0.0.0.0: every interface)")
    port: int = Field(0, ge=0, le=65535, description="listen port")
    drain: Optional[Drain] = Field(None, description="this service's drain (default: the top-level `drain`)")


class Popularity(Section):
    bucket_s: float = Field(1.0, gt=0, description="time bucket of the request counts in Redis")
    ttl_s: float = Field(3600.0, gt=0, description="how long a bucket is kept")
    timeout_s: float = Field(0.5, gt=0, description="a Redis write that takes longer is dropped")


class Router(Service):
    port: int = Field(50051, ge=0, le=65535, description="gRPC listen port")
    placer_address: Optional[str] = Field(None, description="host:port of the placer (MUXSERVE_PLACER_ADDRESS)")
    workers: dict[str, list[str]] = Field({}, description="static routing table {model: [host:port]} (no placer)")
    popularity: Popularity = Field(default_factory=Popularity)
    status_interval_s: float = Field(5.0, gt=0, description="how often workers' GetStatus refines context lengths")
    unavailable_wait_s: float = Field(30.0, ge=0, description="a request with no reachable host waits this long "
                                                              "before UNAVAILABLE")
    http_host: Optional[str] = Field(None, description="HTTP API host (default: `host`)")
    http_port: int = Field(8000, ge=-1, le=65535, description="OpenAI-compatible HTTP API; 0: any, -1: off")
    api_keys: list[typing.Annotated[str, Field(min_length=1)]] = Field(
        [], description="public API keys (MUXSERVE_API_KEY adds one); none: open")
    max_message_bytes: int = Field(4 << 20, ge=1, description="largest gRPC message / HTTP body accepted")
    max_concurrent_streams: int = Field(1024, ge=1, description="requests in flight, all fronts together")
    max_stop_strings: int = Field(16, ge=1, description="stop strings per request")
    max_stop_chars: int = Field(256, ge=1, description="characters per stop string")
    max_request_id_chars: int = Field(128, ge=1, description="characters of a request id")
    max_prompt_chars: int = Field(1_000_000, ge=1, description="characters of a text prompt or of the chat "
                                                             "messages' content (the worker checks the same)")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys_list(cls, v):
        if isinstance(v, str):
            raise ValueError("must be a list of strings, not one string")
        return v


class Placer(Service):
    port: int = Field(50052, ge=0, le=65535)
    policy: Literal["muxserve", "spatial", "temporal"] = Field("muxserve", description="placement policy")
    cost_table: Optional[str] = Field(None, description="JSON cost table (muxserve profile); default: the A100 "
                                                        "LLaMA table; relative to the config file")
    gpu: str = Field("auto", description="the GPU the analytic estimate prices for models the table lacks "
                                         "(cluster.device cuda): auto (nvidia-smi) or a known one (A100-40GB, "
                                         "A100-80GB, H100, H100-PCIe, H200, L4, L40S); on CPU it probes this machine")
    probe_cache: Optional[str] = Field(None, description="folder for the CPU probe's result (default ~/.cache/muxserve)")

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, v: str) -> str:
        if v == "auto":
            return v
        from services.placer.devices import KNOWN_GPUS

        if v not in KNOWN_GPUS:
            raise ValueError(f"must be auto or one of {sorted(KNOWN_GPUS)}, got {v!r}")
        return v
    device_memory_gb: Optional[float] = Field(None, gt=0, description="per device; default 80 on cuda, "
                                                                      "RAM / devices_per_node on cpu")
    memory_utilization: float = Field(0.9, gt=0, le=1, description="fraction of device memory for weights + KV")
    avg_prompt_len: int = Field(161, gt=0, description="tokens per request the estimate assumes")
    avg_output_len: int = Field(337, gt=0)
    prefill_token_budget: int = Field(2048, gt=0, description="tokens per prefill batch")

    @field_validator("avg_prompt_len", "avg_output_len", mode="before")
    @classmethod
    def _whole_tokens(cls, v):
        return round(v) if isinstance(v, float) else v  # a measured mean (161.3) counts in whole tokens
    window_s: float = Field(60.0, gt=0, description="observed-rate window in Redis")
    observed_weight: float = Field(0.7, ge=0, le=1, description="blended rate = w x observed + (1 - w) x prior")
    interval_s: float = Field(5.0, gt=0, description="how often re-placement checks drift")
    drift_threshold: float = Field(0.3, description="sum |rate - planned| / sum planned that counts as drift")
    sustain_s: float = Field(15.0, description="drift must last this long before re-planning")
    min_gain: float = Field(0.05, description="switch only if the objective is this fraction better ...")
    horizon_s: float = Field(600.0, gt=0, description="... and the gain over this horizon beats moving")
    load_time_s: float = Field(30.0, description="estimated seconds to load one LLM")
    worker_ttl_s: float = Field(30.0, gt=0, description="a worker not re-registered for this long is gone and "
                                                        "its unit goes to a free worker (workers re-register "
                                                        "every worker_ttl_s / 3 at most)")
    max_replicas: int = Field(1, ge=1, description="> 1: an LLM that no single unit serves at its rate runs in "
                                                   "up to this many units, its rate split among them")
    host_cpu_ms_per_token: float = Field(0.0, ge=0, description="CPU clusters: CPU ms the mesh's own processes "
                                         "spend per streamed token on the jobs' cores (bench/multiplex.py measures it)")


class Pool(Section):
    head_dim: int = Field(ge=1)
    dtype: MEMMGR_DTYPES
    num_blocks: int = Field(0, ge=0, description="head-wise blocks; or `bytes`")
    bytes: int = Field(0, ge=0, description="a size (4096, 512MiB, 2GiB); num_blocks derived")

    @field_validator("bytes", mode="before")
    @classmethod
    def _size(cls, v):
        from services.memmgr.config import parse_bytes

        return parse_bytes(v)

    @model_validator(mode="after")
    def _one_size(self):
        if (self.num_blocks > 0) == (self.bytes > 0):
            raise ValueError("needs exactly one of num_blocks or bytes (> 0)")
        return self


class Quota(Section):
    adapt_interval_s: float = Field(5.0, ge=0, description="ADBS adaptation period; 0: only on AdaptQuotas")
    threshold: float = Field(0.9, gt=0, le=1, description="LLMs using under this fraction of their quota donate")
    donate_fraction: float = Field(0.5, ge=0, le=1, description="of their unused quota, per round")


class Memmgr(Service):
    port: int = Field(50053, ge=0, le=65535)
    unit_id: str = "unit-0"
    block_size: int = Field(32, ge=1, description="tokens per head-wise block (the workers adopt it)")
    pools: Optional[list[Pool]] = Field(None, min_length=1, description="one pool per (head_dim, dtype); "
                                                                        "null or `auto`: sized from free memory")
    auto_memory_fraction: float = Field(0.5, gt=0, le=1, description="auto: this fraction of (free memory - "
                                                                     "the unit's weights)")
    auto_dtype: MEMMGR_DTYPES = Field("float32", description="auto: the KV dtype (= the engine's dtype)")
    heartbeat_timeout_s: float = Field(10.0, gt=0, description="a session silent this long loses its blocks")
    quota: Quota = Field(default_factory=Quota)
    integrity_interval_s: float = Field(30.0, ge=0, description="the idle integrity check; 0: off")

    @field_validator("pools", mode="before")
    @classmethod
    def _auto(cls, v):
        return None if v == "auto" else v

    @model_validator(mode="after")
    def _distinct(self):
        keys = [(p.head_dim, p.dtype) for p in self.pools or ()]
        if len(set(keys)) != len(keys):
            raise ValueError("two pools for the same head_dim and dtype")
        return self


class Leases(Section):
    """How a worker leases from memmgr (sizes in token blocks: x layers x KV heads head-wise blocks)."""

    chunk_token_blocks: int = Field(8, ge=1, description="blocks leased per RPC")
    low_token_blocks: int = Field(4, ge=0, description="refill the LLM's local free list below this ...")
    high_token_blocks: int = Field(24, ge=1, description="... and return the surplus above this")
    idle_release_s: float = Field(2.0, ge=0, description="an LLM idle this long returns its free list")
    sync_interval_s: float = Field(1.0, gt=0, description="how often quotas are read and waiting counts sent")
    connect_timeout_s: float = Field(30.0, ge=0, description="how long to wait for memmgr at the first load")

    @model_validator(mode="after")
    def _marks(self):
        if self.low_token_blocks >= self.high_token_blocks:
            raise ValueError("low_token_blocks must be < high_token_blocks")
        return self


SERVED_DEFAULTS = ("device", "job_mode")  # null in the file: a served unit's own default (worker/config.py)


def _engine_model() -> type[BaseModel]:
    """A section with EngineConfig's fields (same types and defaults, but `device` and `job_mode` null:
    a served unit fills them); EngineConfig itself checks the ranges."""
    hints = typing.get_type_hints(EngineConfig)
    fields = {}
    for f in dataclasses.fields(EngineConfig):
        default = Field(default_factory=f.default_factory) if f.default is dataclasses.MISSING else f.default
        fields[f.name] = (Optional[hints[f.name]], None) if f.name in SERVED_DEFAULTS else (hints[f.name], default)

    def check(self):
        try:
            EngineConfig(**self.model_dump(exclude_none=True))
        except EngineConfigError as e:
            raise ValueError(str(e)) from None
        return self

    return create_model("Engine", __base__=Section, __validators__={"_ranges": model_validator(mode="after")(check)},
                        **fields)


Engine = _engine_model()
ENGINE_DOCS = {
    "block_size": "tokens per head-wise block (memmgr mode: memmgr's)", "num_blocks": "local pool: head-wise "
    "blocks (0: from pool_bytes, else 4096)", "pool_bytes": "local pool: its size in bytes",
    "max_num_seqs": "running sequences per LLM", "max_prefill_tokens": "token budget of one prefill dispatch",
    "max_model_len": "0: each LLM's own limit", "dtype": "float32 | float16 | bfloat16 | auto",
    "device": "cpu | cuda[:i]; null: cluster.device", "job_mode": "thread | process; null: process when served "
    "(thread for an engine built in code)",
    "compute_shares": "{job: share}; a placement overrides", "overload_allowance": "admitted shares may add up "
    "to 1 + this", "mode": "spatial-temporal | temporal; a placement overrides", "cores": "CPU cores of the "
    "unit; a placement overrides", "start_mps": "cuda + process jobs: start the MPS daemon if none runs",
    "omp_spin_count": "CPU process jobs: how long an idle job's OpenMP threads spin (GOMP_SPINCOUNT) before "
    "they sleep and free the core; -1: libgomp's default (300000); a GOMP_SPINCOUNT in the environment wins",
    "spread_cores": "CPU process jobs: cores a scheduling pass leaves free go to its dispatches (a share is the "
    "least a job gets); false: each dispatch runs on its share's cores only",
    "decode_deadline_scale": "decode jobs go in order of deadline: last return + this x their mean dispatch time "
    "(a short step waits less behind a long one); 0: least recently dispatched first"}


class Worker(Service):
    port: int = Field(50060, ge=0, le=65535, description="`muxserve up`: worker i listens on port + i")
    worker_id: Optional[str] = Field(None, description="default: worker-<hostname> (MUXSERVE_WORKER_ID)")
    advertise: str = Field("", description="host:port routers reach this worker at (default host:port)")
    models: list[str] = Field([], description="static list of models to host without the placer")
    kv: Literal["auto", "memmgr", "local"] = Field("auto", description="auto: memmgr when the config has a "
                                                                       "memmgr section or address, else local")
    leases: Leases = Field(default_factory=Leases)
    engine: Engine = Field(default_factory=Engine)  # type: ignore[valid-type]
    drain_timeout_s: float = Field(120.0, ge=0, description="how long an unloaded LLM may finish its requests")
    max_waiting: int = Field(256, ge=1, description="per LLM: more waiting requests are RESOURCE_EXHAUSTED")
    metrics_port: Optional[int] = Field(None, ge=-1, le=65535, description="Prometheus /metrics; default: "
                                                                           "port + 1000; 0: any; -1: off")
    spares: int = Field(0, ge=0, description="`muxserve up`: workers started beyond one per unit; a spare hosts "
                                             "nothing until a unit's worker is silent for placer.worker_ttl_s, "
                                             "then the placer hands it that unit")


class Cluster(Section):
    device: Literal["cpu", "cuda"] = "cpu"
    nodes: int = Field(1, ge=1, description="nodes of the placement (one worker per unit)")
    devices_per_node: Optional[int] = Field(None, ge=1, description="cores or GPUs per node; default: "
                                                                    "this machine's CPU count")


class Model(Section):
    name: str = Field(min_length=1)
    path: Optional[str] = Field(None, description="local Hugging Face folder (relative: to the config file)")
    size: Optional[str] = Field(None, description="`muxserve plan` only: a LLaMA size (7b ... 65b) for no path")
    rate: float = Field(1.0, ge=0, description="expected requests/s: a prior for placement")
    cost_key: Optional[str] = Field(None, description="the model's key in the cost table (default: name)")

    @model_validator(mode="after")
    def _where(self):
        if not (self.path or self.size):
            raise ValueError("needs `path` (or `size`, for `muxserve plan`)")
        return self


class MeshSettings(Section):
    """The whole mesh config; only `models` is required."""

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="popularity and placement (MUXSERVE_REDIS_URL)")
    models: list[Model] = Field(min_length=1, description="the LLMs to serve")
    cluster: Cluster = Field(default_factory=Cluster)
    internal_token: Optional[str] = Field(None, description="shared secret of internal RPCs (memmgr leases, "
                                                            "quotas) (MUXSERVE_INTERNAL_TOKEN); `muxserve up` "
                                                            "makes one per launch when unset")
    drain: Drain = Field(default_factory=Drain, description="SIGTERM: every service's default")
    router: Router = Field(default_factory=Router)
    placer: Placer = Field(default_factory=Placer)
    memmgr: Memmgr = Field(default_factory=Memmgr)
    worker: Worker = Field(default_factory=Worker)

    @field_validator("internal_token", mode="before")
    @classmethod
    def _empty_is_none(cls, v):
        return v or None  # compose passes ${MUXSERVE_INTERNAL_TOKEN:-}: empty means unset

    @model_validator(mode="after")
    def _names(self):
        names = [m.name for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"models: duplicate name {dup[0]!r}")
        for key in set(self.router.workers) - set(names):
            raise ValueError(f"router.workers: {key!r} is not in `models`")
        for key in set(self.worker.models) - set(names):
            raise ValueError(f"worker.models names {key!r}, which is not in `models`")
        return self
