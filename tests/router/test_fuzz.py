"""Issue 13, done-when 3: 1,000 malformed requests against a real router in front of a real worker
(process jobs, tiny llama): random bytes, other message types sent as a request, out-of-range and NaN
sampling values, out-of-vocab, huge and negative token ids, huge strings, many stop strings, and
duplicate request ids at once. Every one gets a non-OK status with a message, or a correct completion
(finish_reason length or stop, as many tokens as usage says, at most max_tokens); afterwards the
worker holds no sequence and the mesh serves the same greedy tokens as before."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import struct

import grpc

from muxserve.v1 import router_pb2
from router_testlib import gen, mesh, running_router
from services.worker import server as worker_server

N, CONCURRENCY, VOCAB = 1000, 32, 256


@contextlib.asynccontextmanager
async def stack(model_dir, redis_url):
    cfg = mesh(model_dir, redis_url, {}, names=("tiny",),
               worker={"models": ["tiny"], "metrics_port": -1, "engine": {"block_size": 8, "num_blocks": 2048}})
    running, worker, _ = await worker_server.serve(cfg, port=0, host="127.0.0.1", worker_id="w0")
    try:
        rcfg = mesh(model_dir, redis_url, {"workers": {"tiny": [f"127.0.0.1:{running.port}"]}}, names=("tiny",))
        async with running_router(rcfg) as (router, stub):
            async with grpc.aio.insecure_channel(router.address) as raw:
                yield stub, raw.unary_stream("/muxserve.v1.Router/Generate"), worker
    finally:
        await running.stop(0)
        await worker.close()


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _raw_token_ids(ids: list[int]) -> bytes:
    """A GenerateRequest for model "tiny" whose token ids may be negative (encoded as 64-bit varints)."""
    packed = b"".join(_varint(i) for i in ids)
    token_ids = b"\x0a" + _varint(len(packed)) + packed
    sampling = router_pb2.SamplingParams(max_tokens=2).SerializeToString()
    return (b"\x0a\x04tiny" + b"\x1a" + _varint(len(token_ids)) + token_ids
            + b"\x22" + _varint(len(sampling)) + sampling)


def _bad_sampling(rng: random.Random) -> dict:
    return rng.choice([
        {"temperature": math.nan}, {"temperature": math.inf}, {"temperature": -rng.random() * 10},
        {"top_p": math.nan}, {"top_p": 1 + rng.random()}, {"top_p": -0.5}, {"top_k": -rng.randint(1, 99)},
        {"max_tokens": 0}, {"max_tokens": rng.randint(10_000, 2**32 - 1)},
        {"stop": [""]}, {"stop": ["x"] * rng.randint(17, 1000)}, {"stop": ["y" * rng.randint(257, 5000)]},
        {"temperature": struct.unpack("f", struct.pack("I", 0x7FC00001))[0]},  # a signalling-ish NaN
    ])


def _case(rng: random.Random, i: int):
    """(kind, request) where request is a GenerateRequest or raw bytes."""
    kind = rng.choice(["bytes", "wrong_type", "sampling", "vocab", "negative", "huge", "stops", "edge",
                       "model", "chat"])
    if kind == "bytes":
        return kind, bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200)))
    if kind == "wrong_type":
        other = rng.choice([router_pb2.Usage(prompt_tokens=rng.randint(0, 9), e2e_latency_s=rng.random()),
                            router_pb2.ModelInfo(name="tiny", max_model_len=rng.randint(0, 9), units=["u"]),
                            router_pb2.GenerateResponse(request_id="r", token_ids=[1, 2], text="t")])
        return kind, other.SerializeToString()
    if kind == "sampling":
        return kind, gen(prompt="hello", **{"max_tokens": 3, **_bad_sampling(rng)})
    if kind == "vocab":
        return kind, gen(ids=[rng.randint(VOCAB, 2**32 - 1) for _ in range(rng.randint(1, 5))])
    if kind == "negative":
        return kind, _raw_token_ids([rng.randint(-2**31, -1), 5])
    if kind == "huge":  # a huge request id, model name or prompt (few long prompts: they cost transfer time)
        if i % 10 == 0:
            return kind, gen(prompt="z" * 1_000_001, max_tokens=2)
        if i % 2:
            return kind, gen(model="m" * 100_000, prompt="hi")
        req = gen(prompt="hi", max_tokens=2)
        req.request_id = "i" * 10_000
        return kind, req
    if kind == "stops":
        return kind, gen(prompt="hi", max_tokens=2, stop=[str(k) for k in range(rng.randint(17, 300))])
    if kind == "model":
        return kind, gen(model=rng.choice(["", "nope", "TINY", "tiny\x00"]), prompt="hi")
    if kind == "chat":
        req = router_pb2.GenerateRequest(model="tiny", sampling=router_pb2.SamplingParams(max_tokens=2))
        req.messages.messages.add(role=rng.choice(["", "user", "x" * 300]), content=rng.choice(["", "hi"]))
        return kind, req
    return kind, gen(ids=[rng.randint(0, VOCAB - 1) for _ in range(rng.randint(1, 8))],  # valid edges
                     max_tokens=rng.randint(1, 4), temperature=rng.choice([0.0, 0.7, 2.0]),
                     top_p=rng.choice([0.0, 0.1, 1.0]), top_k=rng.choice([0, 1, 50]))


async def _outcome(stub, raw, req, request_id: str = ""):
    """('ok', tokens, finish_reason, completion_tokens) or (status code, details)."""
    try:
        if isinstance(req, bytes):
            chunks = [router_pb2.GenerateResponse.FromString(c) async for c in raw(req, timeout=60)]
        else:
            if request_id:
                req.request_id = request_id
            chunks = [c async for c in stub.Generate(req, timeout=60)]
        toks = [t for c in chunks for t in c.token_ids]
        return ("ok", toks, chunks[-1].finish_reason, chunks[-1].usage.completion_tokens)
    except grpc.aio.AioRpcError as e:
        return (e.code(), e.details())


def _acceptable(req, out) -> bool:
    if out[0] != "ok":
        return out[0] != grpc.StatusCode.OK and bool(out[1])
    _, toks, reason, n = out
    cap = req.sampling.max_tokens if not isinstance(req, bytes) else 2
    return reason in ("length", "stop") and n == len(toks) and 1 <= n <= cap


async def test_a_thousand_malformed_requests(tiny_model, redis_url):
    rng = random.Random(13)
    cases = [_case(rng, i) for i in range(N)]
    async with stack(tiny_model, redis_url) as (stub, raw, worker):
        ref = await _outcome(stub, raw, gen(ids=[1, 2, 3], max_tokens=6, ignore_eos=True))
        sem = asyncio.Semaphore(CONCURRENCY)

        async def one(req, rid=""):
            async with sem:
                return await _outcome(stub, raw, req, rid)
        dup = [gen(ids=[1, 2, 3], max_tokens=6, ignore_eos=True) for _ in range(8)]
        outs = await asyncio.gather(*(one(r) for _, r in cases), *(one(r, "same-id") for r in dup))
        bad = [(k, o) for (k, r), o in zip(cases + [("dup", r) for r in dup], outs)
               if not _acceptable(r, o)]
        assert not bad, bad[:5]
        for o in outs[N:]:  # duplicates at once: each refused with a status, or the right tokens
            assert o[0] != "ok" or o[1] == ref[1], o
        kinds = {}
        for (k, _), o in zip(cases, outs):
            kinds.setdefault(k, set()).add(o[0] if o[0] == "ok" else o[0].name)
        print({k: sorted(v) for k, v in sorted(kinds.items())})
        assert kinds["huge"] == {"INVALID_ARGUMENT", "NOT_FOUND"}  # each bounded with its own status
        assert await _outcome(stub, raw, gen(ids=[1, 2, 3], max_tokens=6, ignore_eos=True)) == ref
        assert all(s["running"] == s["waiting"] == 0 for s in worker.engine.stats()["llms"].values())
        worker.engine.engine.check_integrity()
