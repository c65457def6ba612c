"""Issue 3, done-when 2: a worker killed with SIGKILL mid-generation loses its blocks to memmgr after the
heartbeat timeout, while another worker of the same unit (same memmgr pool) keeps generating: its
greedy output equals transformers' generate, before and after the reclaim.

Worker A is a real OS process (`python -m muxserve.cli worker`, job processes for prefill/decode);
worker B runs in this process (real gRPC server, job processes). Both lease from one real memmgr."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import grpc

from muxserve.netutil import free_port
from muxserve.serving import wait_serving
from muxserve.v1 import worker_pb2_grpc
from worker_testlib import (generate, hf_greedy, llm_usage, memmgr, mesh_dict, request, spawn_worker,
                            start_worker, wait_until)

TIMEOUT_S = 2.0  # memmgr heartbeat timeout


async def test_sigkilled_worker_blocks_return_and_the_other_keeps_generating(tiny_llama, tiny_qwen2, tmp_path):
    svc = await memmgr(heartbeat_timeout_s=TIMEOUT_S)
    models = {"a": tiny_llama, "b": tiny_qwen2}
    engine = {"job_mode": "process"}
    port_a = free_port()
    proc = spawn_worker(mesh_dict(svc, models, ["a"], engine=engine), port_a, "wA", tmp_path)
    b_addr, b_worker, b_running = await start_worker(mesh_dict(svc, models, ["b"], engine=engine), "wB")
    b_first = None
    try:
        await wait_serving(f"127.0.0.1:{port_a}", timeout=120)
        assert svc.stats().sessions == 2
        b_prompt, a_prompt = [7, 8, 9, 10, 11], [5, 6, 7]
        b_first = asyncio.ensure_future(generate(b_addr, request("b1", "b", b_prompt, 160)))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port_a}") as ch:
            a_call = worker_pb2_grpc.WorkerStub(ch).Generate(request("a1", "a", a_prompt, 400))
            for _ in range(3):
                assert (await a_call.read()).token_ids  # A is mid-generation
            assert llm_usage(svc.stats(), "a").used_blocks > 0
            proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            proc.wait(10)
            a_call.cancel()
        assert llm_usage(svc.stats(), "a").used_blocks > 0  # a dead worker says nothing: only the timeout frees
        assert not b_first.done(), "B finished before A was killed: make its generation longer"

        await wait_until(lambda: llm_usage(svc.stats(), "a").used_blocks == 0, TIMEOUT_S + 5,
                         "memmgr to reclaim the killed worker's blocks")
        reclaimed_after = time.monotonic() - killed_at
        stats = svc.stats()
        assert stats.expired_sessions == 1 and stats.sessions == 1
        assert reclaimed_after >= TIMEOUT_S * 2 / 3 - 0.1  # A's last heartbeat was <= TIMEOUT_S / 3 before the kill
        svc.check()

        toks, reason = await b_first  # the stream in flight across the kill and the reclaim
        assert (reason, toks) == ("length", hf_greedy(tiny_qwen2, b_prompt, 160))
        toks, reason = await generate(b_addr, request("b2", "b", [3, 4, 5, 6], 20))  # and after it
        assert (reason, toks) == ("length", hf_greedy(tiny_qwen2, [3, 4, 5, 6], 20))
        b_worker.engine.engine.check_integrity()

        await wait_until(lambda: svc.stats().free_blocks == svc.stats().capacity_blocks, 10,
                         "every block free again once B is idle")
    finally:
        if b_first is not None and not b_first.done():
            b_first.cancel()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        await b_running.stop(0)
        await b_worker.close()
        await svc.stop()
