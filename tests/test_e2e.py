"""End to end: the mesh started by the launcher's own code (real redis-server, placer, memmgr, worker and
router processes), greedy output through the router equal to transformers' generate, popularity in Redis,
Redis outage tolerance, bad inputs answered with status codes while the mesh keeps serving."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from muxserve.v1 import router_pb2, router_pb2_grpc
from tests.meshconf import mesh_of, two_llm_conf

PROMPTS = ["Hello, world! The quick brown fox", "MuxServe serves", "日本語 €"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, tiny_llama, tiny_qwen2, cpu_cost_table):
    root = tmp_path_factory.mktemp("mesh")
    conf = two_llm_conf(tiny_llama, tiny_qwen2, cpu_cost_table)
    conf["worker"]["engine"] = {"block_size": 8, "num_blocks": 2048}
    m = mesh_of(conf, root, http_port=0)  # HTTP on a free port (unused here)
    with m.running(timeout=240):
        yield m


def _generate(address: str, **kw) -> list[router_pb2.GenerateResponse]:
    async def go():
        async with grpc.aio.insecure_channel(address) as ch:
            return [c async for c in router_pb2_grpc.RouterStub(ch).Generate(router_pb2.GenerateRequest(**kw))]
    return asyncio.run(go())


def _reference(path, prompt: str, n: int) -> list[int]:
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("model, fixture", [("llama", "tiny_llama"), ("qwen", "tiny_qwen2")])
def test_greedy_through_router_equals_transformers(mesh, model, fixture, request):
    path = request.getfixturevalue(fixture)
    for prompt in PROMPTS:
        chunks = _generate(mesh.router_address, model=model, prompt=prompt,
                           sampling=router_pb2.SamplingParams(max_tokens=12, ignore_eos=True))
        tokens = [t for c in chunks for t in c.token_ids]
        assert tokens == _reference(path, prompt, 12)
        assert chunks[-1].finish_reason == "length"
        assert chunks[-1].usage.completion_tokens == 12
        u = chunks[-1].usage  # timing measured at the router, queue time including the worker's
        assert 0 <= u.queue_time_s <= u.time_to_first_token_s <= u.e2e_latency_s
        assert u.time_per_output_token_s == pytest.approx((u.e2e_latency_s - u.time_to_first_token_s) / 11)
        assert all(not c.HasField("usage") for c in chunks[:-1])
        text = "".join(c.text for c in chunks)
        assert text == AutoTokenizer.from_pretrained(path).decode(tokens)


def test_popularity_recorded_in_redis(mesh):
    for _ in range(3):
        _generate(mesh.router_address, model="qwen", prompt="count me",
                  sampling=router_pb2.SamplingParams(max_tokens=2))
    client = redis.Redis.from_url(mesh.mesh.redis_url)
    keys = [k.decode() for k in client.scan_iter("*")]
    assert any("qwen" in k for k in keys), keys


@pytest.mark.parametrize("kw, code", [
    ({"model": "nope", "prompt": "x"}, grpc.StatusCode.NOT_FOUND),
    ({"model": "llama", "prompt": ""}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"model": "llama", "prompt": "x", "sampling": {"max_tokens": 0}}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"model": "llama", "prompt": "x", "sampling": {"max_tokens": 4, "temperature": -1}},
     grpc.StatusCode.INVALID_ARGUMENT),
    ({"model": "llama", "prompt": "x", "sampling": {"max_tokens": 4, "top_p": 1.5}},
     grpc.StatusCode.INVALID_ARGUMENT),
    ({"model": "llama", "prompt": "x", "sampling": {"max_tokens": 4, "top_k": -2}},
     grpc.StatusCode.INVALID_ARGUMENT),
    ({"model": "llama", "prompt": "x", "sampling": {"max_tokens": 100000}}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"model": "llama", "prompt": "hello " * 2000, "sampling": {"max_tokens": 4}},
     grpc.StatusCode.INVALID_ARGUMENT),
])
def test_bad_input_gets_status_and_mesh_keeps_serving(mesh, kw, code):
    if "sampling" in kw:
        kw = {**kw, "sampling": router_pb2.SamplingParams(**kw["sampling"])}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _generate(mesh.router_address, **kw)
    assert err.value.code() == code, err.value.details()
    assert err.value.details()
    ok = _generate(mesh.router_address, model="llama", prompt="still serving",
                   sampling=router_pb2.SamplingParams(max_tokens=3, ignore_eos=True))
    assert sum(len(c.token_ids) for c in ok) == 3


def test_memmgr_takes_only_the_launchs_token(mesh):
    """`muxserve up` with no internal_token makes one per launch: its workers lease with it, an outside
    client without it cannot open a session, lease or set a quota; the operator finds it in the log dir."""
    from pathlib import Path

    from muxserve.v1 import memmgr_pb2 as pb
    from muxserve.v1 import memmgr_pb2_grpc as pb_grpc

    token_file = Path(mesh.log_dir) / "internal_token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    with grpc.insecure_channel(mesh.mesh.address("memmgr")) as ch:
        stub = pb_grpc.MemmgrStub(ch)
        for call, md, code in (
                (lambda md: stub.OpenSession(pb.OpenSessionRequest(worker_id="outsider"), metadata=md), (),
                 grpc.StatusCode.UNAUTHENTICATED),
                (lambda md: stub.Lease(pb.LeaseRequest(session_id="x", llm="llama", n=10**6), metadata=md), (),
                 grpc.StatusCode.UNAUTHENTICATED),
                (lambda md: stub.SetQuota(pb.SetQuotaRequest(llm="llama", quota_blocks=0), metadata=md),
                 (("muxserve-internal-token", "guess"),), grpc.StatusCode.PERMISSION_DENIED)):
            with pytest.raises(grpc.RpcError) as err:
                call(md)
            assert err.value.code() == code and err.value.details()
        opened = stub.OpenSession(pb.OpenSessionRequest(worker_id="operator"),
                                  metadata=(("muxserve-internal-token", token),))
        stub.CloseSession(pb.SessionRef(session_id=opened.session_id),
                          metadata=(("muxserve-internal-token", token), ("muxserve-session-key", opened.session_key)))
    ok = _generate(mesh.router_address, model="llama", prompt="leases still work",
                   sampling=router_pb2.SamplingParams(max_tokens=3, ignore_eos=True))
    assert sum(len(c.token_ids) for c in ok) == 3


def test_requests_succeed_with_redis_stopped(mesh):
    redis_proc = mesh.procs.get("redis")
    assert redis_proc is not None, "the launcher should have started redis-server itself"
    redis_proc.terminate()
    redis_proc.wait(10)
    for _ in range(3):
        chunks = _generate(mesh.router_address, model="llama", prompt="no redis",
                           sampling=router_pb2.SamplingParams(max_tokens=4, ignore_eos=True))
        assert chunks[-1].finish_reason == "length"
