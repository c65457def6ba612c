"""Issue 13, point 4: memmgr SIGKILLed and restarted under load. The worker notices (memmgr no longer knows
its session), fails what it had in flight with UNAVAILABLE (never OK with missing tokens, never a hang),
re-registers its LLMs, re-maps memmgr's NEW segment and restarts its job processes over it; new requests
are served (greedy output equal to transformers') and, once the load ends, memmgr's Stats shows every
block free.

memmgr is a real OS process (killed with SIGKILL, then a new one on the same port); the worker is a real
gRPC server in this process with process jobs, hosting two LLMs over the one pool."""

from __future__ import annotations

import asyncio
import signal
import time

import grpc

from worker_testlib import generate, hf_greedy, memmgr, mesh_dict, request, start_worker, wait_until

STREAMS = 8
HEARTBEAT_S = 3.0


async def _stream(address: str, rid: str, model: str, ids: list[int], n: int):
    """('ok', tokens) for a stream that ended OK, or (status code, details)."""
    try:
        toks, reason = await asyncio.wait_for(generate(address, request(rid, model, ids, n)), 90)
        return (reason, toks)
    except grpc.aio.AioRpcError as e:
        return (e.code(), e.details())


async def test_memmgr_sigkill_and_restart_worker_remaps_and_serves(tiny_llama, tiny_qwen2):
    svc = await memmgr(heartbeat_timeout_s=HEARTBEAT_S)
    conf = mesh_dict(svc, {"a": tiny_llama, "b": tiny_qwen2}, ["a", "b"], engine={"job_mode": "process"})
    address, worker, running = await start_worker(conf, "w-restart")
    new = None
    try:
        old_pool = worker.kv.handle.name
        for m in "ab":  # the job processes are up (each maps the segment when it starts)
            assert (await _stream(address, f"warm-{m}", m, [3, 4], 2))[0] == "length"
        ids = [[5 + i, 6, 7, 8] for i in range(STREAMS)]
        load = [asyncio.ensure_future(_stream(address, f"r{i}", "ab"[i % 2], ids[i], 200)) for i in range(STREAMS)]
        await wait_until(lambda: svc.stats().capacity_blocks - svc.stats().free_blocks > 0, 30, "blocks in use")
        svc.proc.send_signal(signal.SIGKILL)
        svc.proc.wait(10)
        killed = time.monotonic()
        new = await memmgr(port=svc.port, heartbeat_timeout_s=HEARTBEAT_S)
        back = time.monotonic()
        results = await asyncio.gather(*load)
        for (i, r) in enumerate(results):  # each stream: an error status, or complete and correct
            if r[0] == "length":
                assert r[1] == hf_greedy(tiny_llama if i % 2 == 0 else tiny_qwen2, ids[i], 200)
            else:
                # UNAVAILABLE: failed with the lost pool; RESOURCE_EXHAUSTED: found no block while memmgr was down
                assert r[0] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED) and r[1], r
        assert any(r[0] != "length" for r in results), "nothing was in flight on the lost pool"

        async def served() -> bool:
            r = await _stream(address, f"after-{time.monotonic()}", "a", [3, 4, 5], 8)
            return r[0] == "length" and r[1] == hf_greedy(tiny_llama, [3, 4, 5], 8)
        await wait_until(served, 30, "a new request served after the restart", interval=0.5)
        recovered_s, after_up_s = time.monotonic() - killed, time.monotonic() - back
        assert worker.kv.handle.name != old_pool and worker.kv.remaps == 1 and not worker.kv.broken
        assert (await _stream(address, "b-after", "b", [9, 10], 6)) == ("length", hf_greedy(tiny_qwen2, [9, 10], 6))
        await wait_until(lambda: new.stats().free_blocks == new.stats().capacity_blocks, 15,
                         "every block of the new memmgr free once the load ends")
        new.check()
        worker.engine.engine.check_integrity()
        print(f"served again {recovered_s:.1f}s after the SIGKILL, {after_up_s:.1f}s after the new memmgr was up")
    finally:
        await running.stop(0)
        await worker.close()
        for s in (new, svc):
            if s is not None and s.proc.poll() is None:
                await s.stop()
