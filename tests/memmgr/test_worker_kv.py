"""The worker's KV blocks from memmgr (services/worker/kv.py, leases.py) against a real memmgr server:
greedy output over memmgr's shared pool equals transformers' generate (thread and process jobs),
memmgr's quotas reach the engine, idle and unloaded LLMs give their cached blocks back, a parked
source stops refilling, LLMs without a matching pool get a clear error, and `worker.kv` resolution."""

from __future__ import annotations

import asyncio

import pytest

from muxserve import config as mesh_config
from muxserve.tiny import write_tiny_checkpoint
from services.worker.config import WorkerConfig
from services.worker.engine.config import EngineConfig, LLMConfig
from services.worker.engine.types import InvalidRequestError, SamplingParams
from services.worker.kv import MemmgrKV, kv_mode
from services.worker.config import LeaseConfig
from worker_testlib import LEASES, hf_greedy, llm_usage, memmgr, prompts, wait_until

GREEDY = SamplingParams(max_tokens=12, ignore_eos=True)


async def collect(aeng, rid, llm, ids, sampling=GREEDY):
    toks = []
    async for ch in aeng.generate(rid, llm, prompt_token_ids=ids, sampling=sampling):
        toks += ch.token_ids
    return toks


def lease_cfg(**kw) -> LeaseConfig:
    return LeaseConfig.from_dict({**LEASES, **kw})


@pytest.mark.parametrize("job_mode", ["thread", "process"])
async def test_greedy_over_memmgr_pool_equals_transformers(tiny_llama, tiny_qwen2, job_mode):
    svc = await memmgr()
    kv = MemmgrKV(svc.address, "w0", lease_cfg())
    try:
        llms = [LLMConfig("a", str(tiny_llama), 2.0), LLMConfig("b", str(tiny_qwen2), 1.0)]
        aeng = await kv.create_engine(llms, EngineConfig(job_mode=job_mode, max_prefill_tokens=32))
        assert aeng.engine.pool.data_ptr() == kv.pool.data_ptr()  # the engine runs over memmgr's pool
        assert aeng.engine.config.block_size == 4  # memmgr's block size wins
        ps = prompts(6, seed=3)
        jobs = [collect(aeng, f"r{i}", "ab"[i % 2], p) for i, p in enumerate(ps)]
        outs = await asyncio.gather(*jobs)
        for i, (p, toks) in enumerate(zip(ps, outs)):
            assert toks == hf_greedy(tiny_llama if i % 2 == 0 else tiny_qwen2, p, 12), f"request {i}"
        await wait_until(lambda: {u.name: u.quota_blocks for u in svc.stats().llms} == aeng.engine.quotas,
                         5, "the engine's quotas to be memmgr's (synced every sync_interval_s)")
        await wait_until(lambda: svc.stats().free_blocks == svc.stats().capacity_blocks,
                         5, "idle LLMs to park their cached blocks")
        aeng.engine.check_integrity()
        svc.check()
        await aeng.close()
    finally:
        await kv.close()
        await svc.stop()


async def test_quota_set_in_memmgr_reaches_engine_and_unload_returns_blocks(tiny_llama, tiny_qwen2):
    svc = await memmgr()
    kv = MemmgrKV(svc.address, "w0", lease_cfg(idle_release_s=60))  # no parking: unload must return them
    try:
        aeng = await kv.create_engine([LLMConfig("a", str(tiny_llama))], EngineConfig())
        await kv.add_llm(aeng, LLMConfig("b", str(tiny_qwen2)))
        await kv.client.set_quota("a", 300)
        await wait_until(lambda: aeng.engine.quotas["a"] == 300, 5, "the engine to take memmgr's quota")
        await collect(aeng, "r", "b", [5, 6, 7], SamplingParams(max_tokens=20, ignore_eos=True))
        assert llm_usage(await kv.client.stats(), "b").used_blocks > 0  # its local free list
        await aeng.remove_llm("b")
        assert llm_usage(await kv.client.stats(), "b").used_blocks == 0
        assert "b" not in kv.sources.by_llm
        await aeng.close()
    finally:
        await kv.close()
        assert svc.stats().sessions == 0
        await svc.stop()


async def acquire_soon(src, n: int, timeout_s: float = 5.0) -> list[int]:
    """acquire(n) never waits on memmgr: retry while the refill thread leases what it asked for."""
    for _ in range(int(timeout_s / 0.01)):
        ids = await asyncio.to_thread(src.acquire, n)
        if ids is not None:
            return ids
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {n} blocks after {timeout_s}s")


async def test_parked_source_returns_cache_and_stops_refilling(tiny_llama):
    svc = await memmgr()
    kv = MemmgrKV(svc.address, "w0", lease_cfg(idle_release_s=60))
    try:
        aeng = await kv.create_engine([LLMConfig("a", str(tiny_llama))], EngineConfig())
        src = kv.sources.get("a")
        ids = await acquire_soon(src, 4)
        src.release(ids)
        assert src.num_free > 0
        assert await asyncio.to_thread(src.park) > 0 and src.num_free == 0
        await asyncio.sleep(0.8)  # the refill thread wakes every 0.5 s at most
        assert llm_usage(await kv.client.stats(), "a").used_blocks == 0
        # demand resumes it: the acquire that finds the list empty returns at once (no RPC under the
        # engine lock) and the refill thread leases what it asked for
        assert await asyncio.to_thread(src.acquire, 4) is None and not src.parked and src.refilling
        assert await acquire_soon(src, 4) and not src.refilling
        await aeng.close()
    finally:
        await kv.close()
        await svc.stop()


async def test_llm_without_a_matching_pool_gets_a_clear_error(tiny_llama, tmp_path):
    small = write_tiny_checkpoint(tmp_path / "hd8", "llama", hidden_size=32, num_heads=4, num_kv_heads=2)
    svc = await memmgr(pools=[{"head_dim": 16, "dtype": "float32", "num_blocks": 64},
                              {"head_dim": 8, "dtype": "float32", "num_blocks": 64}])
    kv, kv16 = MemmgrKV(svc.address, "w0", lease_cfg()), MemmgrKV(svc.address, "w1", lease_cfg())
    try:  # no pool at all for head_dim 16 / float16
        with pytest.raises(InvalidRequestError, match=r"'a'.*no KV pool.*head_dim=16/float16"):
            await kv16.create_engine([LLMConfig("a", str(tiny_llama))], EngineConfig(dtype="float16"))
        # a pool exists, but not the one this worker already runs over
        aeng = await kv.create_engine([LLMConfig("a", str(tiny_llama))], EngineConfig())
        with pytest.raises(InvalidRequestError, match=r"'s'.*head_dim=8/float32.*head_dim=16/float32"):
            await kv.add_llm(aeng, LLMConfig("s", str(small)))
        assert list(aeng.engine.llms) == ["a"]
        await aeng.close()
    finally:
        await kv.close()
        await kv16.close()
        await svc.stop()


def test_kv_mode_resolution(monkeypatch):
    for k in ("ADDRESS", "HOST", "PORT"):
        monkeypatch.delenv(f"MUXSERVE_MEMMGR_{k}", raising=False)
    models = [{"name": "m", "path": "/nowhere"}]
    plain = mesh_config.from_dict({"models": models})
    with_memmgr = mesh_config.from_dict({"models": models, "memmgr": {"port": 50099}})
    auto = WorkerConfig.from_section({})
    assert (kv_mode(plain, auto), kv_mode(with_memmgr, auto)) == ("local", "memmgr")
    assert kv_mode(with_memmgr, WorkerConfig.from_section({"kv": "local"})) == "local"
    monkeypatch.setenv("MUXSERVE_MEMMGR_ADDRESS", "memmgr:50053")
    assert kv_mode(plain, auto) == "memmgr"
    with pytest.raises(ValueError, match="worker.kv"):
        WorkerConfig.from_section({"kv": "remote"})
    with pytest.raises(ValueError, match="low_token_blocks"):
        WorkerConfig.from_section({"leases": {"low_token_blocks": 30}})
    with pytest.raises(ValueError, match=r"unknown key `worker.leases.chunk` \(did you mean `worker.leases.chunk_token_blocks`"):
        WorkerConfig.from_section({"leases": {"chunk": 3}})


async def test_expired_session_fails_requests_then_recovers_with_a_new_one(tiny_llama):
    svc = await memmgr(heartbeat_timeout_s=1.0)
    kv = MemmgrKV(svc.address, "w0", lease_cfg())
    try:
        aeng = await kv.create_engine([LLMConfig("a", str(tiny_llama))], EngineConfig())
        ps = prompts(2, seed=5)
        assert await collect(aeng, "before", "a", ps[0]) == hf_greedy(tiny_llama, ps[0], 12)
        async for ch in aeng.generate("failed", "a", prompt_token_ids=[5, 6], sampling=SamplingParams(max_tokens=900,
                                                                                                     ignore_eos=True)):
            if not ch.finish_reason:
                await asyncio.to_thread(aeng.engine.fail_all, "lease lost")  # what recovery does first
            last = ch
        assert (last.finish_reason, str(last.error)) == ("error", "lease lost")

        old = kv.client.session_id

        async def silent():
            pass
        kv.client.heartbeat = silent  # this worker goes quiet (a stall): memmgr expires its session
        await wait_until(lambda: svc.stats().expired_sessions == 1, 10, "memmgr to expire the silent session")
        del kv.client.heartbeat  # the next heartbeat learns it expired
        await wait_until(lambda: kv.client.session_id not in ("", old) and kv.client.expired is None
                         and not kv.recovering, 10, "a new session")  # "": the new client, not opened yet
        assert svc.stats().sessions == 1 and not kv.broken
        assert await collect(aeng, "after", "a", ps[1]) == hf_greedy(tiny_llama, ps[1], 12)
        assert llm_usage(svc.stats(), "a").used_blocks > 0  # leased in the new session
        aeng.engine.check_integrity()
        svc.check()
        await aeng.close()
    finally:
        await kv.close()
        await svc.stop()


def test_engine_device_defaults_to_the_clusters():
    from services.worker.engine.config import EngineConfig

    assert EngineConfig.from_section(WorkerConfig.from_section({}).engine_section("cuda")).device == "cuda"
    own = WorkerConfig.from_section({"engine": {"device": "cpu", "dtype": "bfloat16"}}).engine_section("cuda")
    assert EngineConfig.from_section(own).device == "cpu" and own["dtype"] == "bfloat16"  # an explicit key wins
