"""Engine configuration: one dataclass, validated when built, fillable from the worker's YAML section.

Pool size: `num_blocks` head-wise blocks, or `pool_bytes` (divided by the bytes of one block), or
neither (then 4096 blocks). `max_model_len` 0 means each LLM's own limit from its config.
Compute shares are per job name ("<llm>/prefill", "<llm>/decode") as fractions of the unit (0, 1]:
a job's dispatch is admitted when its share fits the unit's free compute plus `overload_allowance`
(compute.py); on CPU the unit's `cores` are divided among all its jobs by share (compute_share.py),
on CUDA a process job's share is its MPS thread percentage. `mode` "spatial-temporal" lets jobs
overlap (MuxServe); "temporal" runs one dispatch at a time, FCFS across LLMs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from muxserve.config_errors import ConfigError

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "float16", "bfloat16", "auto")
JOB_MODES = ("thread", "process")
UNIT_MODES = ("spatial-temporal", "temporal")


class EngineConfigError(ConfigError):
    """A bad engine setting; the message names the key."""


@dataclass(frozen=True)
class LLMConfig:
    """One LLM of a unit: its name, local HF folder and expected request rate (req/s prior)."""

    name: str
    path: str
    rate: float = 1.0


@dataclass
class EngineConfig:
    block_size: int = 32  # tokens per head-wise block; 32 measured faster than 16 on CPU (docs/benchmarks.md)
    num_blocks: int = 0  # head-wise blocks in the pool; 0 = derive from pool_bytes or default
    pool_bytes: int = 0
    max_num_seqs: int = 256  # running sequences per LLM
    max_prefill_tokens: int = 4096  # token budget of one prefill dispatch
    max_model_len: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    job_mode: str = "thread"
    compute_shares: dict[str, float] = field(default_factory=dict)
    overload_allowance: float = 0.2  # MuxServe's 20%: admitted shares may add up to 1 + this
    mode: str = "spatial-temporal"
    cores: list[int] = field(default_factory=list)  # CPU cores of the unit; empty = all this process may use
    start_mps: bool = False  # device cuda + job_mode process: start the CUDA MPS daemon if none runs
    omp_spin_count: int = 10000  # CPU process jobs: GOMP_SPINCOUNT of each job's OpenMP threads; -1: libgomp's own
    spread_cores: bool = True  # CPU process jobs: cores a scheduling pass leaves free go to its dispatches (compute.py)
    decode_deadline_scale: float = 3.0  # decode jobs in deadline order (scheduler.py); 0: least recently dispatched

    def __post_init__(self):
        for key in ("block_size", "max_num_seqs", "max_prefill_tokens"):
            if int(getattr(self, key)) < 1:
                raise EngineConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("num_blocks", "pool_bytes", "max_model_len"):
            if int(getattr(self, key)) < 0:
                raise EngineConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.dtype not in DTYPES:
            raise EngineConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.job_mode not in JOB_MODES:
            raise EngineConfigError(f"job_mode must be one of {JOB_MODES}, got {self.job_mode!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise EngineConfigError(f"device must be cpu or cuda[:i], got {self.device!r}")
        if self.mode not in UNIT_MODES:
            raise EngineConfigError(f"mode must be one of {UNIT_MODES}, got {self.mode!r}")
        if float(self.decode_deadline_scale) < 0:
            raise EngineConfigError(f"decode_deadline_scale must be >= 0, got {self.decode_deadline_scale}")
        if not 0 <= float(self.overload_allowance) <= 1:
            raise EngineConfigError(f"overload_allowance must be in [0, 1], got {self.overload_allowance}")
        if int(self.omp_spin_count) < -1:
            raise EngineConfigError(f"omp_spin_count must be >= 0 (or -1: libgomp's default), got {self.omp_spin_count}")
        if any(int(c) < 0 for c in self.cores):
            raise EngineConfigError(f"cores must be CPU ids >= 0, got {self.cores}")
        for job, share in self.compute_shares.items():
            if not 0 < float(share) <= 1:
                raise EngineConfigError(f"compute_shares[{job!r}] must be in (0, 1], got {share}")

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype of weights and pool; "auto" not yet resolved (resolve_dtype) is float32 on CPU, else bf16."""
        import torch  # imported here: the mesh's config model reads this module without torch

        if self.dtype == "auto":
            return torch.float32 if self.device == "cpu" else torch.bfloat16
        return getattr(torch, self.dtype)

    def resolve_dtype(self, paths: list[str]) -> "EngineConfig":
        """This config with dtype "auto" made concrete: float32 on CPU (unless asked otherwise: set dtype), on CUDA
        the first checkpoint's own dtype (muxserve.checkpoint) where the device supports it (bfloat16 needs
        compute capability 8), else float16; one pool per unit holds one dtype, so the unit's first LLM decides."""
        if self.dtype != "auto":
            return self
        from dataclasses import replace

        import torch

        from muxserve.checkpoint import describe

        if self.device == "cpu" or not paths:
            return replace(self, dtype="float32" if self.device == "cpu" else "bfloat16")
        want = describe(paths[0]).dtype
        if want == "bfloat16" and not torch.cuda.is_bf16_supported():
            want = "float16"
        return replace(self, dtype=want if want in ("float16", "bfloat16", "float32") else "float16")

    def pool_blocks(self, head_dim: int) -> int:
        """Head-wise blocks of the pool for this head_dim (K and V per block)."""
        if self.num_blocks:
            return self.num_blocks
        if self.pool_bytes:
            per_block = 2 * self.block_size * head_dim * self.torch_dtype.itemsize
            n = self.pool_bytes // per_block
            if n < 1:
                raise EngineConfigError(f"pool_bytes {self.pool_bytes} holds no block of {per_block} bytes")
            return n
        return 4096

    @classmethod
    def from_section(cls, section: dict) -> "EngineConfig":
        """Build from the keys of a `worker.engine` section, validated as that section (muxserve.settings:
        an unknown key or a bad type is an error naming it)."""
        from pydantic import ValidationError

        from muxserve.config_errors import describe
        from muxserve.settings import Engine

        try:
            return cls(**Engine.model_validate(section or {}).model_dump(exclude_none=True))
        except ValidationError as e:
            raise EngineConfigError(describe(e, Engine, ("engine",))) from None
