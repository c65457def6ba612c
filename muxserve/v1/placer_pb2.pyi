from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterWorkerRequest(_message.Message):
    __slots__ = ("worker_id", "address", "num_devices", "failed_models")
    class FailedModelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NUM_DEVICES_FIELD_NUMBER: _ClassVar[int]
    FAILED_MODELS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    address: str
    num_devices: int
    failed_models: _containers.ScalarMap[str, str]
    def __init__(self, worker_id: _Optional[str] = ..., address: _Optional[str] = ..., num_devices: _Optional[int] = ..., failed_models: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RegisterWorkerResponse(_message.Message):
    __slots__ = ("unit_id", "version", "heartbeat_s")
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_S_FIELD_NUMBER: _ClassVar[int]
    unit_id: str
    version: int
    heartbeat_s: float
    def __init__(self, unit_id: _Optional[str] = ..., version: _Optional[int] = ..., heartbeat_s: _Optional[float] = ...) -> None: ...

class GetPlacementRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LLMPlacement(_message.Message):
    __slots__ = ("name", "prefill_share", "decode_share", "rate", "est_throughput", "batch")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PREFILL_SHARE_FIELD_NUMBER: _ClassVar[int]
    DECODE_SHARE_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    EST_THROUGHPUT_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    name: str
    prefill_share: float
    decode_share: float
    rate: float
    est_throughput: float
    batch: int
    def __init__(self, name: _Optional[str] = ..., prefill_share: _Optional[float] = ..., decode_share: _Optional[float] = ..., rate: _Optional[float] = ..., est_throughput: _Optional[float] = ..., batch: _Optional[int] = ...) -> None: ...

class Unit(_message.Message):
    __slots__ = ("unit_id", "devices", "llms", "worker_address", "est_throughput", "mode")
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    LLMS_FIELD_NUMBER: _ClassVar[int]
    WORKER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    EST_THROUGHPUT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    unit_id: str
    devices: _containers.RepeatedScalarFieldContainer[int]
    llms: _containers.RepeatedCompositeFieldContainer[LLMPlacement]
    worker_address: str
    est_throughput: float
    mode: str
    def __init__(self, unit_id: _Optional[str] = ..., devices: _Optional[_Iterable[int]] = ..., llms: _Optional[_Iterable[_Union[LLMPlacement, _Mapping]]] = ..., worker_address: _Optional[str] = ..., est_throughput: _Optional[float] = ..., mode: _Optional[str] = ...) -> None: ...

class Placement(_message.Message):
    __slots__ = ("version", "policy", "objective", "units", "total_rate", "failed_models")
    class FailedModelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_RATE_FIELD_NUMBER: _ClassVar[int]
    FAILED_MODELS_FIELD_NUMBER: _ClassVar[int]
    version: int
    policy: str
    objective: float
    units: _containers.RepeatedCompositeFieldContainer[Unit]
    total_rate: float
    failed_models: _containers.ScalarMap[str, str]
    def __init__(self, version: _Optional[int] = ..., policy: _Optional[str] = ..., objective: _Optional[float] = ..., units: _Optional[_Iterable[_Union[Unit, _Mapping]]] = ..., total_rate: _Optional[float] = ..., failed_models: _Optional[_Mapping[str, str]] = ...) -> None: ...
