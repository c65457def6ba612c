"""Issue 3, done-when 3, end to end through the worker's gRPC Generate: a burst of generations over two
LLMs sharing memmgr's pool (job processes), some streams cancelled by the client; the finished ones
equal transformers' greedy generate, and afterwards memmgr's free_blocks returns to capacity_blocks
(idle LLMs give their cached free lists back after worker.leases.idle_release_s)."""

from __future__ import annotations

import asyncio

import grpc

from muxserve.v1 import worker_pb2_grpc
from worker_testlib import generate, hf_greedy, memmgr, mesh_dict, prompts, request, start_worker, wait_until

N, CANCEL_EVERY = 12, 3  # requests 0, 3, 6, 9 are cancelled by the client


async def cancelled_after_first_chunks(address: str, req, n_chunks: int) -> int:
    async with grpc.aio.insecure_channel(address) as ch:
        call = worker_pb2_grpc.WorkerStub(ch).Generate(req)
        got = 0
        for _ in range(n_chunks):
            got += len((await call.read()).token_ids)
        call.cancel()
        return got


async def test_burst_with_cancels_returns_every_block(tiny_llama, tiny_qwen2):
    svc = await memmgr(pools=[{"head_dim": 16, "dtype": "float32", "num_blocks": 1024}])
    models = {"a": tiny_llama, "b": tiny_qwen2}
    conf = mesh_dict(svc, models, ["a", "b"], engine={"job_mode": "process", "max_prefill_tokens": 64})
    address, worker, running = await start_worker(conf, "w0")
    peak = 0

    async def watch():
        nonlocal peak
        while True:
            s = svc.stats()
            peak = max(peak, s.capacity_blocks - s.free_blocks)
            await asyncio.sleep(0.02)

    watcher = asyncio.ensure_future(watch())
    try:
        ps = prompts(N, seed=7)
        calls = []
        for i, p in enumerate(ps):
            req = request(f"r{i}", "ab"[i % 2], p, 150 if i % CANCEL_EVERY == 0 else 24)
            calls.append(cancelled_after_first_chunks(address, req, 2) if i % CANCEL_EVERY == 0
                         else generate(address, req))
        results = await asyncio.gather(*calls)
        for i, (p, res) in enumerate(zip(ps, results)):
            if i % CANCEL_EVERY:
                assert res == (hf_greedy(tiny_llama if i % 2 == 0 else tiny_qwen2, p, 24), "length"), f"r{i}"
            else:
                assert 0 < res < 150, f"r{i} was not cancelled mid-generation"
        assert peak > 0
        stats = await wait_until(lambda: (lambda s: s if s.free_blocks == s.capacity_blocks else None)(
            svc.stats()), 15, "free_blocks == capacity_blocks after the burst")
        assert stats.sessions == 1 and all(u.used_blocks == 0 for u in stats.llms)
        svc.check()
        eng = worker.engine.engine
        eng.check_integrity()
        assert all(s["running"] == s["waiting"] == s["used_blocks"] == 0 for s in eng.stats()["llms"].values())
        assert (await generate(address, request("after", "a", [4, 5, 6], 8)))[1] == "length"  # still serving
    finally:
        watcher.cancel()
        await running.stop(0)
        await worker.close()
        await svc.stop()
