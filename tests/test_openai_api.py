"""The OpenAI-compatible HTTP API against a real mesh (launcher: redis, placer, memmgr, worker, router
processes), driven by the official `openai` client: completions and chat, whole and streamed, n > 1,
stop, seed, usage, errors with OpenAI's body (404, 400, 401, 429, 413), greedy text equal to the gRPC
front's and to transformers' generate with BOS, API keys on both fronts, 100 MB messages refused on
both fronts while the mesh keeps serving, and the router's and the worker's /metrics after traffic."""

from __future__ import annotations

import asyncio
import re

import grpc
import httpx
import openai
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from muxserve.launcher import Mesh
from muxserve.netutil import free_port
from muxserve.v1 import router_pb2, router_pb2_grpc

KEY = "sk-test-key"
AUTH = (("authorization", f"Bearer {KEY}"),)
PROMPT = "Hello, world! The quick brown fox"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, tiny_llama, tiny_qwen2, cpu_cost_table):
    root = tmp_path_factory.mktemp("openai-mesh")
    ports = {s: free_port() for s in ("redis", "router", "placer", "memmgr", "worker", "http")}
    conf = {
        "redis_url": f"redis://127.0.0.1:{ports['redis']}/0",
        "models": [{"name": "llama", "path": str(tiny_llama), "rate": 2.0, "cost_key": "tiny-llama"},
                   {"name": "qwen", "path": str(tiny_qwen2), "rate": 1.0, "cost_key": "tiny-qwen2"}],
        "cluster": {"device": "cpu", "nodes": 1, "devices_per_node": 2},
        **{s: {"host": "127.0.0.1", "port": ports[s]} for s in ("router", "placer", "memmgr")},
        "worker": {"host": "127.0.0.1", "port": ports["worker"], "max_waiting": 4,
                   "engine": {"block_size": 8, "num_blocks": 2048, "max_num_seqs": 2}},
    }
    conf["router"].update(http_port=ports["http"], api_keys=[KEY])
    conf["placer"]["cost_table"] = str(cpu_cost_table)
    path = root / "mesh.yaml"
    path.write_text(yaml.safe_dump(conf))
    m = Mesh(str(path), log_dir=str(root / "logs"))
    with m.running(timeout=240):
        yield m


@pytest.fixture(scope="module")
def client(mesh):
    return openai.OpenAI(base_url=mesh.http_url, api_key=KEY, max_retries=0, timeout=60)


def grpc_generate(address: str, metadata=AUTH, **kw) -> list[router_pb2.GenerateResponse]:
    async def go():
        async with grpc.aio.insecure_channel(address) as ch:
            stub = router_pb2_grpc.RouterStub(ch)
            return [c async for c in stub.Generate(router_pb2.GenerateRequest(**kw), metadata=metadata)]
    return asyncio.run(go())


def hf_greedy(path, ids: list[int], n: int) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("model, fixture", [("llama", "tiny_llama"), ("qwen", "tiny_qwen2")])
def test_greedy_completion_equals_grpc_and_transformers_with_bos(mesh, client, model, fixture, request):
    path = request.getfixturevalue(fixture)
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok(PROMPT).input_ids  # transformers' default: BOS first for llama, nothing added for qwen2
    assert (ids[0] == tok.bos_token_id) == (model == "llama")
    expected = tok.decode(hf_greedy(path, ids, 12), skip_special_tokens=True)
    out = client.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0,
                                    extra_body={"ignore_eos": True})
    assert out.choices[0].text == expected
    assert (out.choices[0].finish_reason, out.usage.prompt_tokens, out.usage.completion_tokens) == (
        "length", len(ids), 12)
    chunks = grpc_generate(mesh.router_address, model=model, prompt=PROMPT,
                           sampling=router_pb2.SamplingParams(max_tokens=12, ignore_eos=True))
    assert "".join(c.text for c in chunks) == expected
    plain = client.completions.create(model=model, prompt=PROMPT, max_tokens=1, temperature=0,
                                      extra_body={"add_special_tokens": False})
    assert plain.usage.prompt_tokens == len(tok.encode(PROMPT, add_special_tokens=False))


def test_token_id_prompt_and_models(client, tiny_llama):
    assert {m.id for m in client.models.list()} == {"llama", "qwen"}
    ids = AutoTokenizer.from_pretrained(tiny_llama)(PROMPT).input_ids
    by_ids = client.completions.create(model="llama", prompt=ids, max_tokens=8, temperature=0,
                                       extra_body={"ignore_eos": True})
    by_text = client.completions.create(model="llama", prompt=PROMPT, max_tokens=8, temperature=0,
                                        extra_body={"ignore_eos": True})
    assert by_ids.choices[0].text == by_text.choices[0].text


def test_completion_stream_with_usage_matches_whole(client):
    kw = dict(model="llama", prompt=PROMPT, max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
    whole = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_sse_ends_with_done(mesh):
    body = {"model": "qwen", "prompt": "MuxServe", "max_tokens": 3, "stream": True}
    r = httpx.post(f"{mesh.http_url}/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    events = [line for line in r.text.split("\n\n") if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


def test_chat_whole_and_stream_use_the_chat_template(client, tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello, world!"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    expected = tok.decode(hf_greedy(tiny_llama, ids, 10), skip_special_tokens=True)
    kw = dict(model="llama", messages=messages, max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**kw)
    assert whole.choices[0].message.content == expected and whole.choices[0].message.role == "assistant"
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (len(ids), 10)
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length"


def test_n_choices_and_seed_reproducible(client):
    kw = dict(model="qwen", prompt=PROMPT, max_tokens=12, temperature=1.0, seed=7, n=3,
              extra_body={"ignore_eos": True})
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    texts = [c.text for c in sorted(a.choices, key=lambda c: c.index)]
    assert texts == [c.text for c in sorted(b.choices, key=lambda c: c.index)]
    assert len(set(texts)) > 1, "choices of n > 1 must be different samples"
    assert a.usage.completion_tokens == 36 and a.usage.prompt_tokens == b.usage.prompt_tokens
    streamed = list(client.completions.create(stream=True, **kw))
    by_index = {i: "".join(c.choices[0].text for c in streamed if c.choices and c.choices[0].index == i)
                for i in range(3)}
    assert [by_index[i] for i in range(3)] == texts


def test_stop_string_truncates(client):
    full = client.completions.create(model="llama", prompt=PROMPT, max_tokens=16, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = full[len(full) // 2:len(full) // 2 + 2]
    out = client.completions.create(model="llama", prompt=PROMPT, max_tokens=16, temperature=0, stop=[stop],
                                    extra_body={"ignore_eos": True}).choices[0]
    assert out.finish_reason == "stop" and out.text == full[:full.index(stop)]


def _error(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def test_errors_have_openai_bodies_and_codes(mesh, client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert _error(e.value)["code"] == "model_not_found"
    for bad in ({"temperature": -1}, {"max_tokens": 0}, {"top_p": 1.5}, {"n": 0},
                {"extra_body": {"top_k": "many"}}, {"stop": ["x"] * 17}):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="llama", prompt="x", **{"max_tokens": 2, **bad})
        assert _error(e.value)["type"] == "invalid_request_error", bad
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="llama", prompt="hello " * 2000, max_tokens=2)
    assert "max_model_len" in _error(e.value)["message"]
    wrong = openai.OpenAI(base_url=mesh.http_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.completions.create(model="llama", prompt="x", max_tokens=2)
    assert _error(e.value)["type"] == "authentication_error"
    missing = httpx.post(f"{mesh.http_url}/completions", json={"model": "llama", "prompt": "x", "max_tokens": 2})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(mesh.http_url.removesuffix("/v1") + "/health").status_code == 200  # open
    ok = client.completions.create(model="llama", prompt="still serving", max_tokens=3)
    assert ok.usage.completion_tokens >= 1


def test_full_waiting_queue_answers_429_then_serves(mesh):
    async def one(aclient):
        try:
            out = await aclient.completions.create(model="qwen", prompt=PROMPT, max_tokens=300,
                                                   extra_body={"ignore_eos": True})
            return out.choices[0].finish_reason
        except openai.RateLimitError as exc:
            assert _error(exc)["type"] == "rate_limit_error" and "max_waiting" in _error(exc)["message"]
            return 429

    async def burst():
        async with openai.AsyncOpenAI(base_url=mesh.http_url, api_key=KEY, max_retries=0, timeout=120) as aclient:
            return await asyncio.gather(*(one(aclient) for _ in range(12)))

    results = asyncio.run(burst())
    assert results.count(429) >= 1 and results.count("length") >= 4, results  # at least max_waiting fit
    chunks = grpc_generate(mesh.router_address, model="qwen", prompt="after the burst",
                           sampling=router_pb2.SamplingParams(max_tokens=3, ignore_eos=True))
    assert chunks[-1].finish_reason == "length"


def test_grpc_needs_the_key(mesh):
    with pytest.raises(grpc.aio.AioRpcError) as e:
        grpc_generate(mesh.router_address, metadata=(), model="llama", prompt="x",
                      sampling=router_pb2.SamplingParams(max_tokens=2))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as e:
        grpc_generate(mesh.router_address, metadata=(("authorization", "Bearer nope"),), model="llama",
                      prompt="x", sampling=router_pb2.SamplingParams(max_tokens=2))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_100mb_messages_refused_on_both_fronts(mesh, client):
    huge = "x" * (100 << 20)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        grpc_generate(mesh.router_address, model="llama", prompt=huge, sampling=router_pb2.SamplingParams(max_tokens=2))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    body = b'{"model": "llama", "max_tokens": 2, "prompt": "' + huge.encode() + b'"}'
    r = httpx.post(f"{mesh.http_url}/completions", content=body, timeout=60,
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    ok = client.completions.create(model="llama", prompt="still serving", max_tokens=3,
                                   extra_body={"ignore_eos": True})
    assert ok.usage.completion_tokens == 3


def _series(text: str, name: str, **labels) -> float:
    """The value of one sample `name{labels}` in a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        m = re.match(r"^([^{\s]+)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name:
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(got.get(k) == v for k, v in labels.items()):
                return float(m.group(3))
    return 0.0


def test_metrics_after_traffic(mesh, client):
    url = mesh.http_url.removesuffix("/v1") + "/metrics"
    before = httpx.get(url).text
    for _ in range(3):
        client.completions.create(model="qwen", prompt="count me", max_tokens=5, extra_body={"ignore_eos": True})
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="qwen", prompt="count me", max_tokens=0)
    after = httpx.get(url).text
    q = {"model_name": "qwen"}

    def delta(name, **labels):
        return _series(after, name, **{**q, **labels}) - _series(before, name, **{**q, **labels})

    assert delta("muxserve:request_success_total", finished_reason="length") == 3
    assert delta("muxserve:generation_tokens_total") == 15
    assert delta("muxserve:prompt_tokens_total") == 3 * len(AutoTokenizer.from_pretrained(
        mesh.mesh.model("qwen").path)("count me").input_ids)
    for hist in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds"):
        assert delta(f"muxserve:{hist}_count") == 3, hist
    assert delta("muxserve:inter_token_latency_seconds_count") == 12
    assert _series(after, "muxserve:placement_version") >= 1
    base = mesh.mesh.section("worker").port + 1000  # worker i: its gRPC port (base + i) + 1000
    worker = "\n".join(httpx.get(f"http://127.0.0.1:{base + i}/metrics").text
                        for i, name in enumerate(n for n in mesh.procs if n.startswith("worker-")))
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "kv_quota_blocks",
                 "job_compute_share"):
        assert f"muxserve:{name}{{" in worker, name
    assert _series(worker, "muxserve:job_busy_seconds_total", model_name="qwen", job="decode") > 0
    assert _series(worker, "muxserve:job_dispatches_total", model_name="qwen", job="decode") >= 3, "one per token"
    assert "muxserve:num_preemptions_total" in worker
