from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PoolHandle(_message.Message):
    __slots__ = ("kind", "name", "num_blocks", "block_size", "head_dim", "dtype", "payload")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    num_blocks: int
    block_size: int
    head_dim: int
    dtype: str
    payload: bytes
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., num_blocks: _Optional[int] = ..., block_size: _Optional[int] = ..., head_dim: _Optional[int] = ..., dtype: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class OpenSessionResponse(_message.Message):
    __slots__ = ("session_id", "heartbeat_timeout_s", "unit_id", "session_key")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_KEY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    heartbeat_timeout_s: float
    unit_id: str
    session_key: str
    def __init__(self, session_id: _Optional[str] = ..., heartbeat_timeout_s: _Optional[float] = ..., unit_id: _Optional[str] = ..., session_key: _Optional[str] = ...) -> None: ...

class SessionRef(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("released_blocks",)
    RELEASED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    released_blocks: int
    def __init__(self, released_blocks: _Optional[int] = ...) -> None: ...

class LLMSpec(_message.Message):
    __slots__ = ("name", "num_layers", "num_kv_heads", "head_dim", "dtype", "rate")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_KV_HEADS_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    rate: float
    def __init__(self, name: _Optional[str] = ..., num_layers: _Optional[int] = ..., num_kv_heads: _Optional[int] = ..., head_dim: _Optional[int] = ..., dtype: _Optional[str] = ..., rate: _Optional[float] = ...) -> None: ...

class RegisterLLMRequest(_message.Message):
    __slots__ = ("session_id", "llm")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LLM_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    llm: LLMSpec
    def __init__(self, session_id: _Optional[str] = ..., llm: _Optional[_Union[LLMSpec, _Mapping]] = ...) -> None: ...

class RegisterLLMResponse(_message.Message):
    __slots__ = ("pool", "quota_blocks", "blocks_per_token_block")
    POOL_FIELD_NUMBER: _ClassVar[int]
    QUOTA_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_PER_TOKEN_BLOCK_FIELD_NUMBER: _ClassVar[int]
    pool: PoolHandle
    quota_blocks: int
    blocks_per_token_block: int
    def __init__(self, pool: _Optional[_Union[PoolHandle, _Mapping]] = ..., quota_blocks: _Optional[int] = ..., blocks_per_token_block: _Optional[int] = ...) -> None: ...

class LeaseRequest(_message.Message):
    __slots__ = ("session_id", "llm", "n")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LLM_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    llm: str
    n: int
    def __init__(self, session_id: _Optional[str] = ..., llm: _Optional[str] = ..., n: _Optional[int] = ...) -> None: ...

class LeaseResponse(_message.Message):
    __slots__ = ("block_ids",)
    BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    block_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, block_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("session_id", "llm", "block_ids")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LLM_FIELD_NUMBER: _ClassVar[int]
    BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    llm: str
    block_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session_id: _Optional[str] = ..., llm: _Optional[str] = ..., block_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("session_id", "waiting")
    class WaitingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    waiting: _containers.ScalarMap[str, int]
    def __init__(self, session_id: _Optional[str] = ..., waiting: _Optional[_Mapping[str, int]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LLMUsage(_message.Message):
    __slots__ = ("name", "used_blocks", "quota_blocks", "head_dim", "dtype", "denied")
    NAME_FIELD_NUMBER: _ClassVar[int]
    USED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    QUOTA_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DENIED_FIELD_NUMBER: _ClassVar[int]
    name: str
    used_blocks: int
    quota_blocks: int
    head_dim: int
    dtype: str
    denied: int
    def __init__(self, name: _Optional[str] = ..., used_blocks: _Optional[int] = ..., quota_blocks: _Optional[int] = ..., head_dim: _Optional[int] = ..., dtype: _Optional[str] = ..., denied: _Optional[int] = ...) -> None: ...

class PoolStats(_message.Message):
    __slots__ = ("head_dim", "dtype", "capacity_blocks", "free_blocks")
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    FREE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    head_dim: int
    dtype: str
    capacity_blocks: int
    free_blocks: int
    def __init__(self, head_dim: _Optional[int] = ..., dtype: _Optional[str] = ..., capacity_blocks: _Optional[int] = ..., free_blocks: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("capacity_blocks", "free_blocks", "llms", "pools", "sessions", "expired_sessions", "unit_id")
    CAPACITY_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    FREE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    LLMS_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    capacity_blocks: int
    free_blocks: int
    llms: _containers.RepeatedCompositeFieldContainer[LLMUsage]
    pools: _containers.RepeatedCompositeFieldContainer[PoolStats]
    sessions: int
    expired_sessions: int
    unit_id: str
    def __init__(self, capacity_blocks: _Optional[int] = ..., free_blocks: _Optional[int] = ..., llms: _Optional[_Iterable[_Union[LLMUsage, _Mapping]]] = ..., pools: _Optional[_Iterable[_Union[PoolStats, _Mapping]]] = ..., sessions: _Optional[int] = ..., expired_sessions: _Optional[int] = ..., unit_id: _Optional[str] = ...) -> None: ...

class SetQuotaRequest(_message.Message):
    __slots__ = ("llm", "quota_blocks")
    LLM_FIELD_NUMBER: _ClassVar[int]
    QUOTA_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    llm: str
    quota_blocks: int
    def __init__(self, llm: _Optional[str] = ..., quota_blocks: _Optional[int] = ...) -> None: ...

class SetQuotaResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AdaptQuotasRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class QuotaChange(_message.Message):
    __slots__ = ("llm", "old_quota", "new_quota")
    LLM_FIELD_NUMBER: _ClassVar[int]
    OLD_QUOTA_FIELD_NUMBER: _ClassVar[int]
    NEW_QUOTA_FIELD_NUMBER: _ClassVar[int]
    llm: str
    old_quota: int
    new_quota: int
    def __init__(self, llm: _Optional[str] = ..., old_quota: _Optional[int] = ..., new_quota: _Optional[int] = ...) -> None: ...

class AdaptQuotasResponse(_message.Message):
    __slots__ = ("changes",)
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[QuotaChange]
    def __init__(self, changes: _Optional[_Iterable[_Union[QuotaChange, _Mapping]]] = ...) -> None: ...

class CheckIntegrityRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CheckIntegrityResponse(_message.Message):
    __slots__ = ("ok", "problem")
    OK_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    problem: str
    def __init__(self, ok: _Optional[bool] = ..., problem: _Optional[str] = ...) -> None: ...
