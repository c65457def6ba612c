"""Plain data and errors of the memory manager (no protobuf, no device).

Units: every count here is in HEAD-WISE blocks (one layer x one KV head x block_size tokens, K and V;
layout in services/worker/engine/pool.py). One token block of an LLM costs num_layers x num_kv_heads
head-wise blocks (`LLMSpec.blocks_per_token_block`).
"""

from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("float32", "float16", "bfloat16")


class MemmgrError(Exception):
    """Base of memmgr's domain errors; the servicer maps each subclass to one gRPC status code."""


class InvalidArgumentError(MemmgrError):
    """A field is malformed, no pool matches the LLM's head_dim/dtype, or a release is invalid."""


class NotFoundError(MemmgrError):
    """Unknown LLM or session."""


class SessionExpiredError(MemmgrError):
    """The session's heartbeats stopped; its blocks went back to the pool. Open a new session."""


class ConflictError(MemmgrError):
    """The LLM is registered with another shape and still holds blocks."""


class ExhaustedError(MemmgrError):
    """Over the LLM's quota, or the pool has too few free blocks; the message says which."""


@dataclass(frozen=True)
class PoolKey:
    head_dim: int
    dtype: str

    def __str__(self) -> str:
        return f"head_dim={self.head_dim}/{self.dtype}"


@dataclass(frozen=True)
class LLMSpec:
    """An LLM of the unit, as far as its KV cache is concerned."""

    name: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    rate: float = 1.0

    @property
    def pool_key(self) -> PoolKey:
        return PoolKey(self.head_dim, self.dtype)

    @property
    def blocks_per_token_block(self) -> int:
        return self.num_layers * self.num_kv_heads

    def validate(self) -> None:
        """Raise InvalidArgumentError naming the bad field."""
        if not self.name:
            raise InvalidArgumentError("llm.name must be non-empty")
        for field in ("num_layers", "num_kv_heads", "head_dim"):
            if getattr(self, field) < 1:
                raise InvalidArgumentError(f"llm.{field} must be >= 1, got {getattr(self, field)}")
        if self.dtype not in DTYPES:
            raise InvalidArgumentError(f"llm.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not self.rate >= 0:  # also rejects NaN
            raise InvalidArgumentError(f"llm.rate must be >= 0, got {self.rate}")


@dataclass(frozen=True)
class PoolHandle:
    """How a process finds a pool without copying it (see segment.attach).

    kind "shm": `name` is a POSIX shared-memory segment holding the contiguous tensor
    [num_blocks, 2, block_size, head_dim] of `dtype`. kind "cuda_ipc": `payload` is the pickled
    CUDA IPC handle of that tensor (untested here: no GPU).
    """

    kind: str
    name: str
    num_blocks: int
    block_size: int
    head_dim: int
    dtype: str
    payload: bytes = b""

    @property
    def key(self) -> PoolKey:
        return PoolKey(self.head_dim, self.dtype)


@dataclass(frozen=True)
class Owner:
    """Who holds a leased block: one LLM through one worker session."""

    llm: str
    session: str


@dataclass
class LLMUsage:
    name: str
    used_blocks: int
    quota_blocks: int
    head_dim: int
    dtype: str
    denied: int = 0


@dataclass
class PoolStats:
    head_dim: int
    dtype: str
    capacity_blocks: int
    free_blocks: int


@dataclass
class Stats:
    capacity_blocks: int
    free_blocks: int
    llms: list[LLMUsage]
    pools: list[PoolStats]
    sessions: int
    expired_sessions: int
    unit_id: str = ""
