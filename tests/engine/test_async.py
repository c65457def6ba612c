"""AsyncUnitEngine: streaming, errors before the first chunk, cancellation frees blocks; and
job_mode="process" (prefill and decode in their own processes) with exact greedy parity."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.worker.engine.async_engine import AsyncUnitEngine
from services.worker.engine.config import EngineConfig, LLMConfig
from services.worker.engine.engine import UnitEngine
from services.worker.engine.types import InvalidRequestError, SamplingParams, UnknownModelError

from .conftest import hf_greedy, prompts

GREEDY = SamplingParams(max_tokens=10, ignore_eos=True)


async def collect(aeng, rid, llm, ids, sampling=GREEDY):
    toks, text, last = [], "", None
    async for ch in aeng.generate(rid, llm, prompt_token_ids=ids, sampling=sampling):
        toks += ch.token_ids
        text += ch.text
        last = ch
    return toks, text, last


async def wait_for(pred, timeout=20.0):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition never became true"
        await asyncio.sleep(0.01)


def test_async_streams_concurrent_requests_exactly(ck_llama):
    async def main():
        aeng = await AsyncUnitEngine.create([LLMConfig("m", str(ck_llama))], EngineConfig(block_size=4, num_blocks=2000))
        ps = prompts(aeng.engine.llms["m"].spec.vocab_size, 5, seed=21)
        ticks = 0

        async def ticker():  # the event loop stays responsive while the engine computes
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)
        t = asyncio.create_task(ticker())
        outs = await asyncio.gather(*(collect(aeng, f"r{i}", "m", p) for i, p in enumerate(ps)))
        t.cancel()
        tok = aeng.engine.llms["m"].tokenizer
        for p, (toks, text, last) in zip(ps, outs):
            assert toks == hf_greedy(ck_llama, p, 10, ignore_eos=True)
            assert text == tok.decode(toks, skip_special_tokens=True)
            assert last.finish_reason == "length" and last.completion_tokens == 10
        assert ticks > 5
        await aeng.close()
    asyncio.run(main())


def test_async_errors_come_before_any_chunk_and_service_continues(ck_llama):
    async def main():
        aeng = await AsyncUnitEngine.create([LLMConfig("m", str(ck_llama))], EngineConfig(block_size=4, num_blocks=500))
        with pytest.raises(UnknownModelError):
            await collect(aeng, "x", "nope", [5, 6])
        with pytest.raises(InvalidRequestError, match="empty"):
            await collect(aeng, "y", "m", [])
        toks, _, last = await collect(aeng, "z", "m", [5, 6, 7])
        assert len(toks) == 10 and last.finish_reason == "length"
        await aeng.close()
    asyncio.run(main())


def test_cancel_and_early_stop_abort_and_free_blocks(ck_llama):
    async def main():
        aeng = await AsyncUnitEngine.create([LLMConfig("m", str(ck_llama))], EngineConfig(block_size=4, num_blocks=1000))
        long = SamplingParams(max_tokens=800, ignore_eos=True)  # long enough to be cancelled mid-stream

        async def consume_forever():
            async for _ in aeng.generate("c", "m", prompt_token_ids=[5] * 20, sampling=long):
                pass
        task = asyncio.create_task(consume_forever())
        await wait_for(lambda: aeng.stats()["pool"]["free"] < 1000)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for(lambda: aeng.stats()["pool"]["free"] == 1000)

        gen = aeng.generate("e", "m", prompt_token_ids=[5] * 20, sampling=long)
        first = await gen.__anext__()
        assert first.token_ids and not first.finish_reason
        await gen.aclose()  # the consumer stops iterating
        await wait_for(lambda: aeng.stats()["pool"]["free"] == 1000 and not aeng.engine.has_unfinished())
        aeng.engine.check_integrity()
        await aeng.close()
    asyncio.run(main())


def test_async_remove_llm_drains(ck_llama, ck_qwen2):
    """remove_llm(drain=True) while a request is mid-stream: the request still runs to its end."""
    async def main():
        aeng = await AsyncUnitEngine.create([LLMConfig("m", str(ck_llama))], EngineConfig(block_size=4, num_blocks=1000))
        await aeng.add_llm(LLMConfig("q", str(ck_qwen2)))
        gen = aeng.generate("q1", "q", prompt_token_ids=[5, 6, 7], sampling=SamplingParams(max_tokens=300,
                                                                                           ignore_eos=True))
        first = await gen.__anext__()  # streaming: the request is in flight, ~300 decode steps to go
        assert aeng.stats()["llms"]["q"]["running"] == 1
        remove = asyncio.create_task(aeng.remove_llm("q", drain=True))
        toks, last = list(first.token_ids), first
        async for ch in gen:
            toks, last = toks + ch.token_ids, ch
        await remove
        assert len(toks) == 300 and last.finish_reason == "length"
        assert "q" not in aeng.stats()["llms"] and aeng.stats()["pool"]["free"] == 1000
        await aeng.close()
    asyncio.run(main())


def test_process_jobs_give_exact_greedy_output(ck_llama, ck_mistral):
    cfg = EngineConfig(block_size=4, num_blocks=1500, job_mode="process", max_prefill_tokens=32,
                       compute_shares={"a/prefill": 0.5, "a/decode": 0.5})
    eng = UnitEngine([LLMConfig("a", str(ck_llama)), LLMConfig("b", str(ck_mistral))], cfg)
    ps = prompts(eng.llms["a"].spec.vocab_size, 4, seed=22)
    try:
        for n, path in (("a", ck_llama), ("b", ck_mistral)):
            outs = eng.generate(n, ps, GREEDY)
            for p, (toks, _) in zip(ps, outs):
                assert toks == hf_greedy(path, p, 10, ignore_eos=True)
        pids = {eng.llms["a"].prefill.pid, eng.llms["a"].decode.pid}
        assert len(pids) == 2 and None not in pids, "prefill and decode run in two processes"
        assert eng.stats()["pool"]["free"] == 1500
    finally:
        eng.close()


def test_a_consumer_that_falls_behind_gets_one_merged_chunk(ck_llama):
    """While the consumer does not read, the engine keeps stepping; what queued up meanwhile arrives as
    ONE chunk with every token and its text in order, the finish_reason and the usage, and the tokens
    are exactly those of a consumer that kept up."""
    async def main():
        aeng = await AsyncUnitEngine.create([LLMConfig("m", str(ck_llama))], EngineConfig(block_size=4, num_blocks=500))
        ids = [5, 6, 7, 8]
        sampling = SamplingParams(max_tokens=12, ignore_eos=True)
        kept_up, _, _ = await collect(aeng, "a", "m", ids, sampling)
        stream = aeng.generate("b", "m", prompt_token_ids=ids, sampling=sampling)
        first = await stream.__anext__()
        await wait_for(lambda: not aeng.engine.has_unfinished())  # the rest is computed and queued
        rest = [ch async for ch in stream]
        assert len(rest) == 1, [ch.token_ids for ch in rest]
        (last,) = rest
        assert first.token_ids + last.token_ids == kept_up and len(kept_up) == 12
        tok = aeng.engine.llms["m"].tokenizer
        assert first.text + last.text == tok.decode(kept_up, skip_special_tokens=True)
        assert last.finish_reason == "length" and last.completion_tokens == 12 and last.timing is not None
        await aeng.close()
    asyncio.run(main())
