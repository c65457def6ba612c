"""Helpers shared by memmgr tests: build configs, start a real server on port 0."""

from __future__ import annotations

import grpc

from services.memmgr.config import MemmgrConfig
from services.memmgr.server import MemmgrService, start

POOLS = [{"head_dim": 16, "dtype": "float32", "num_blocks": 256},
         {"head_dim": 8, "dtype": "float16", "num_blocks": 64}]


def config(**overrides) -> MemmgrConfig:
    sec = {"pools": POOLS, "block_size": 4, "heartbeat_timeout_s": 5.0,
           "quota": {"adapt_interval_s": 0}, "integrity_interval_s": 0}
    sec.update(overrides)
    return MemmgrConfig.from_section(sec)


async def start_memmgr(**overrides) -> MemmgrService:
    return await start(config(**overrides), port=0)


async def status_code(call) -> grpc.StatusCode:
    """The status an RPC ends with (OK when it succeeds); a refusal must say why in its details."""
    try:
        await call
    except grpc.aio.AioRpcError as e:
        assert e.details(), "a refusal says why"
        return e.code()
    return grpc.StatusCode.OK
