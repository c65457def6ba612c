"""A worker that stops gracefully hands its memmgr session back at once (CloseSession), long before the session
would expire; CloseSession is authenticated like every session RPC, so no one else can end a session.

memmgr and the worker are real OS processes (`python -m muxserve.cli memmgr|worker`) sharing an internal token;
memmgr's heartbeat timeout is 60 s, so only CloseSession can free the blocks within the test's seconds."""

from __future__ import annotations

import asyncio
import signal
import time

import grpc

from muxserve.netutil import free_port
from muxserve.serving import wait_serving
from muxserve.v1 import memmgr_pb2 as pb
from muxserve.v1 import memmgr_pb2_grpc as pb_grpc
from services.memmgr.auth import SESSION_KEY, TOKEN_KEY
from services.memmgr.client import MemmgrClient
from memmgr_testlib import status_code
from worker_testlib import generate, llm_usage, memmgr, mesh_dict, request, spawn_worker

TOKEN = "close-session-token"
TTL_S = 60.0  # memmgr's heartbeat timeout: far longer than anything below waits


async def test_sigterm_returns_every_block_at_once(tiny_llama, tmp_path):
    svc = await memmgr(token=TOKEN, heartbeat_timeout_s=TTL_S)
    port = free_port()
    conf = mesh_dict(svc, {"a": tiny_llama}, ["a"], leases={"idle_release_s": TTL_S, "sync_interval_s": 0.1})
    proc = spawn_worker({**conf, "internal_token": TOKEN, "drain": {"pre_stop_s": 0, "grace_s": 5}}, port, "w",
                        tmp_path)
    try:
        await wait_serving(f"127.0.0.1:{port}", timeout=120)
        toks, reason = await generate(f"127.0.0.1:{port}", request("r1", "a", [5, 6, 7], 40))
        assert (reason, len(toks)) == ("length", 40)
        held = llm_usage(svc.stats(), "a").used_blocks
        assert held > 0 and svc.stats().sessions == 1  # the worker keeps its leased blocks cached (no idle release)
        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        assert await asyncio.to_thread(proc.wait, 30) == 0
        took = time.monotonic() - stopped
        stats = svc.stats()  # right after the exit: nothing waited for the session to expire
        assert (stats.free_blocks, stats.sessions, stats.expired_sessions) == (stats.capacity_blocks, 0, 0), stats
        assert took < TTL_S / 4, f"the worker took {took:.1f}s to stop"
        svc.check()
        log = (tmp_path / "w.log").read_text()
        assert "CloseSession failed" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        await svc.stop()


async def test_close_session_needs_the_token_and_the_sessions_own_key():
    svc = await memmgr(token=TOKEN, heartbeat_timeout_s=TTL_S)
    owner, other = MemmgrClient(svc.address, "owner", token=TOKEN), MemmgrClient(svc.address, "other", token=TOKEN)
    try:
        await owner.open(heartbeats=False), await other.open(heartbeats=False)
        await owner.register_llm("m", 2, 2, 16, "float32")
        await owner.lease("m", 8)
        ref = pb.SessionRef(session_id=owner.session_id)
        refused = [((), grpc.StatusCode.UNAUTHENTICATED),  # no token, no key
                   (((SESSION_KEY, owner.session_key),), grpc.StatusCode.UNAUTHENTICATED),  # its key, no token
                   (((TOKEN_KEY, "guess"), (SESSION_KEY, owner.session_key)), grpc.StatusCode.PERMISSION_DENIED),
                   (((TOKEN_KEY, TOKEN),), grpc.StatusCode.PERMISSION_DENIED),  # the token alone (the operator)
                   (((TOKEN_KEY, TOKEN), (SESSION_KEY, other.session_key)), grpc.StatusCode.PERMISSION_DENIED)]
        async with grpc.aio.insecure_channel(svc.address) as ch:
            stub = pb_grpc.MemmgrStub(ch)
            for metadata, code in refused:
                assert await status_code(stub.CloseSession(ref, metadata=metadata)) == code, metadata
                stats = svc.stats()
                assert (stats.sessions, llm_usage(stats, "m").used_blocks) == (2, 8), "a refused call changed nothing"
            closed = await stub.CloseSession(ref, metadata=((TOKEN_KEY, TOKEN), (SESSION_KEY, owner.session_key)))
        assert closed.released_blocks == 8
        stats = svc.stats()
        assert (stats.sessions, stats.free_blocks, stats.expired_sessions) == (1, stats.capacity_blocks, 0)
        svc.check()
    finally:
        owner.session_id = ""  # closed above
        await owner.close(), await other.close()
        await svc.stop()
