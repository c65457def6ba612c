"""Internal RPC auth against a real memmgr gRPC server: the internal token, and each session's own key."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from memmgr_testlib import config, status_code
from muxserve.v1 import memmgr_pb2 as pb
from muxserve.v1 import memmgr_pb2_grpc as pb_grpc
from services.memmgr.auth import SESSION_KEY, TOKEN_KEY
from services.memmgr.client import MemmgrClient
from services.memmgr.errors import PermissionDeniedError, UnauthenticatedError
from services.memmgr.server import start
from services.memmgr.types import NotFoundError

TOKEN = "t0ken"
LLM = pb.LLMSpec(name="m", num_layers=2, num_kv_heads=2, head_dim=16, dtype="float32", rate=1.0)


async def _used(stub) -> int:
    return (await stub.Stats(pb.StatsRequest())).capacity_blocks - (await stub.Stats(pb.StatsRequest())).free_blocks


async def test_without_the_token_nothing_leases_or_sets_quotas():
    svc = await start(config(), port=0, token=TOKEN)
    owner = MemmgrClient(svc.address, "w0", token=TOKEN)
    try:
        await owner.open(heartbeats=False)
        await owner.register_llm("m", 2, 2, 16, "float32")
        held = await owner.lease("m", 8)
        async with grpc.aio.insecure_channel(svc.address) as ch:
            stub = pb_grpc.MemmgrStub(ch)
            own_key = ((SESSION_KEY, owner.session_key),)
            lease = pb.LeaseRequest(session_id=owner.session_id, llm="m", n=8)
            # no token at all: UNAUTHENTICATED, even with the session's key
            for call in (stub.OpenSession(pb.OpenSessionRequest(worker_id="x")), stub.Lease(lease, metadata=own_key),
                         stub.SetQuota(pb.SetQuotaRequest(llm="m", quota_blocks=10**6)),
                         stub.AdaptQuotas(pb.AdaptQuotasRequest())):
                assert await status_code(call) == grpc.StatusCode.UNAUTHENTICATED
            wrong = ((TOKEN_KEY, "guess"),)
            assert await status_code(stub.SetQuota(pb.SetQuotaRequest(llm="m", quota_blocks=1), metadata=wrong)) == \
                grpc.StatusCode.PERMISSION_DENIED
            assert await status_code(stub.Stats(pb.StatsRequest())) == grpc.StatusCode.OK  # read-only stays open
            assert await _used(stub) == 8  # nothing moved
            # the operator (token alone) sets quotas
            assert await status_code(stub.SetQuota(pb.SetQuotaRequest(llm="m", quota_blocks=64),
                                             metadata=((TOKEN_KEY, TOKEN),))) == grpc.StatusCode.OK
            assert next(u.quota_blocks for u in (await stub.Stats(pb.StatsRequest())).llms if u.name == "m") == 64
        await owner.release("m", held)
    finally:
        await owner.close()
        await svc.stop()


async def test_a_session_is_only_its_openers():
    """Token or not, a call naming a session needs that session's key: another caller's is refused."""
    for token in (TOKEN, None):
        svc = await start(config(), port=0, token=token)
        a, b = MemmgrClient(svc.address, "wa", token=token), MemmgrClient(svc.address, "wb", token=token)
        try:
            await a.open(heartbeats=False), await b.open(heartbeats=False)
            await a.register_llm("m", 2, 2, 16, "float32")
            held = await a.lease("m", 4)
            b.session_id = a.session_id  # b names a's session with its own key
            with pytest.raises(PermissionDeniedError, match="is not this caller's"):
                await b.lease("m", 4)
            with pytest.raises(PermissionDeniedError, match="is not this caller's"):
                await b.release("m", held)
            b.session_key = ""  # or with no key at all
            with pytest.raises(PermissionDeniedError, match="no muxserve-session-key"):
                await b.release("m", held)
            assert (await a.stats()).llms[0].used_blocks == 4  # a's lease untouched
            src = a.block_source("m", chunk_token_blocks=2, low_token_blocks=0, high_token_blocks=4)
            got = await asyncio.to_thread(src.acquire, 4)  # the sync path carries the key too
            for _ in range(100):
                got = got or await asyncio.to_thread(src.acquire, 4)
                await asyncio.sleep(0.02)
            assert got and len(got) == 4
            await asyncio.to_thread(src.release, got)
            await a.release("m", held)
        finally:
            await a.close()
            b.session_id = ""  # its own session is dropped by memmgr's stop
            await b.close()
            await svc.stop()


async def test_client_without_the_token_gets_a_clear_error():
    svc = await start(config(), port=0, token=TOKEN)
    c = MemmgrClient(svc.address, "w", token=None)
    try:
        with pytest.raises(UnauthenticatedError, match="internal token"):
            await c.open(heartbeats=False)
    finally:
        await c.close()
        await svc.stop()


async def test_a_session_this_memmgr_never_opened_is_not_found_before_its_key_is_checked():
    """A worker whose memmgr restarted names its old session with the old process's key: it must learn that
    the session is unknown (NOT_FOUND, so it re-registers), not that its key is wrong."""
    svc = await start(config(), port=0, token=TOKEN)
    c = MemmgrClient(svc.address, "w", token=TOKEN)
    try:
        await c.open(heartbeats=False)
        c.session_id, c.session_key = "0" * 32, "a key of another memmgr process"
        with pytest.raises(NotFoundError, match="unknown session"):
            await c.lease("m", 4)
    finally:
        c.session_id = ""
        await c.close()
        await svc.stop()
