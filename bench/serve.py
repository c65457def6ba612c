"""A serving benchmark in the style of `vllm bench serve`: the same requests through the router's
OpenAI-compatible HTTP API and through its gRPC API, in one run, side by side.

    python bench/serve.py [--num-requests 64] [--rate inf] [--prompt-words 48] [--output-len 64]
                          [--rounds 2] [--client aiohttp|httpx|openai] [--out results.json]

It starts a mesh on free ports (muxserve.launcher: redis, placer, memmgr, worker(s), router) serving
`--model` (default models/tiny-llama, written by scripts/install.sh), or uses a running one
(`--http-url http://127.0.0.1:8000/v1 --grpc-address 127.0.0.1:50051 --model-name NAME`). Requests arrive
at `--rate` req/s (Poisson, fixed seed: both fronts get the same schedule; `inf`: all at once), each with
a text prompt and a fixed output length (ignore_eos, greedy). Each round runs both fronts, the order
alternating between rounds. Per front: request throughput, output tokens/s, TTFT, TPOT and ITL p50 / p99
(ms), measured by the client, and the CPU seconds that the router, the worker (with its job processes) and
the client spent in the round (Linux /proc; only for a mesh the script starts); then HTTP/gRPC ratios, the
TTFT the HTTP front adds and the median CPU per 1,000 output tokens. The HTTP client is aiohttp reading the
SSE lines as `vllm bench serve` does (the default, `--client aiohttp`), httpx's aiter_lines (`--client
httpx`: about twice the client CPU per token) or the official `openai` AsyncOpenAI (`--client openai`:
streaming, stream_options.include_usage), whose per-chunk parsing costs client CPU that, on a small
machine, the engine shares. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from proctime import tree_cpu_s  # noqa: E402

WORDS = ("the quick brown fox jumps over the lazy dog muxserve serves many large language models at once on "
         "shared devices with flexible spatial temporal multiplexing").split()


def prompts(n: int, words: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


def arrivals(n: int, rate: float, seed: int = 0) -> list[float]:
    if rate == float("inf"):
        return [0.0] * n
    rng, t, out = random.Random(seed), 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


def result(t0: float, times: list[float], tokens: int) -> dict:
    """One request: TTFT, TPOT, ITL gaps (s) from the start and the chunk arrival times."""
    ttft = times[0] - t0 if times else float("nan")
    e2e = (times[-1] if times else time.perf_counter()) - t0
    return {"ttft": ttft, "e2e": e2e, "tokens": tokens, "end": t0 + e2e,
            "tpot": (e2e - ttft) / (tokens - 1) if tokens > 1 else 0.0,
            "itl": [b - a for a, b in zip(times, times[1:])]}


async def http_openai(client, model: str, prompt: str, n: int) -> dict:
    t0, times, tokens = time.perf_counter(), [], 0
    stream = await client.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0, stream=True,
                                             stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    async for chunk in stream:
        if chunk.choices:
            times.append(time.perf_counter())
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return result(t0, times, tokens)


def _body(model: str, prompt: str, n: int) -> dict:
    return {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}


async def _read_sse(t0: float, lines, prefix, done) -> dict:
    """One request's result from its SSE lines (str or bytes: `prefix` and `done` of the same type)."""
    times, tokens = [], 0
    async for line in lines:
        line = line.strip()
        if not line.startswith(prefix) or line == done:
            continue
        event = json.loads(line[len(prefix):])
        if event.get("choices"):
            times.append(time.perf_counter())
        if event.get("usage"):
            tokens = event["usage"]["completion_tokens"]
    return result(t0, times, tokens)


async def http_raw(client, model: str, prompt: str, n: int) -> dict:
    t0 = time.perf_counter()
    async with client.stream("POST", "/completions", json=_body(model, prompt, n)) as r:
        r.raise_for_status()
        return await _read_sse(t0, r.aiter_lines(), "data: ", "data: [DONE]")


async def http_aiohttp(session, url: str, model: str, prompt: str, n: int) -> dict:
    """As `vllm bench serve` reads a stream: aiohttp, one SSE line at a time."""
    t0 = time.perf_counter()
    async with session.post(url, json=_body(model, prompt, n)) as r:
        r.raise_for_status()
        return await _read_sse(t0, r.content, b"data: ", b"data: [DONE]")


async def grpc_one(stub, metadata, model: str, prompt: str, n: int) -> dict:
    from muxserve.v1 import router_pb2

    req = router_pb2.GenerateRequest(model=model, prompt=prompt,
                                     sampling=router_pb2.SamplingParams(max_tokens=n, ignore_eos=True))
    t0, times, tokens = time.perf_counter(), [], 0
    async for chunk in stub.Generate(req, metadata=metadata):
        if chunk.token_ids:
            times.append(time.perf_counter())
        if chunk.finish_reason:
            tokens = chunk.usage.completion_tokens
    return result(t0, times, tokens)


async def run_front(send, texts: list[str], starts: list[float], pids: dict[str, int] | None = None) -> dict:
    cpu0, client0 = tree_cpu_s(pids or {}), time.process_time()
    t0 = time.perf_counter()

    async def at(start: float, text: str) -> dict:
        await asyncio.sleep(max(0.0, t0 + start - time.perf_counter()))
        return await send(text)

    results = await asyncio.gather(*(at(s, p) for s, p in zip(starts, texts)))
    out = summarize(results, max(r["end"] for r in results) - t0)
    cpu1 = tree_cpu_s(pids or {})
    out["client_cpu_s"] = time.process_time() - client0
    out.update({f"{name}_cpu_s": cpu1[name] - cpu0[name] for name in cpu1})
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000 if xs else float("nan")


def summarize(results: list[dict], duration: float) -> dict:
    itl = [g for r in results for g in r["itl"]]
    out = {"requests": len(results), "duration_s": duration, "req_per_s": len(results) / duration,
           "output_tok_per_s": sum(r["tokens"] for r in results) / duration}
    for key, xs in (("ttft", [r["ttft"] for r in results]), ("tpot", [r["tpot"] for r in results]), ("itl", itl)):
        out[f"{key}_p50_ms"], out[f"{key}_p99_ms"] = pct(xs, 50), pct(xs, 99)
    return out


async def bench(a, http_url: str, grpc_address: str, model: str, pids: dict[str, int] | None = None) -> dict:
    import aiohttp
    import grpc
    import httpx
    import openai

    from muxserve.v1 import router_pb2_grpc

    texts, starts = prompts(a.num_requests, a.prompt_words), arrivals(a.num_requests, a.rate)
    metadata = (("authorization", f"Bearer {a.api_key}"),) if a.api_key else ()
    limits = httpx.Limits(max_connections=a.num_requests + 8, max_keepalive_connections=a.num_requests + 8)
    oa = openai.AsyncOpenAI(base_url=http_url, api_key=a.api_key or "none", max_retries=0, timeout=600,
                            http_client=openai.DefaultAsyncHttpxClient(limits=limits) if a.client == "openai" else None)
    raw = httpx.AsyncClient(base_url=http_url, timeout=600, limits=limits,
                            headers={"Authorization": f"Bearer {a.api_key}"} if a.api_key else {})
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600),
                                    connector=aiohttp.TCPConnector(limit=a.num_requests + 8),
                                    headers={"Authorization": f"Bearer {a.api_key}"} if a.api_key else {})
    channel = grpc.aio.insecure_channel(grpc_address)
    stub = router_pb2_grpc.RouterStub(channel)
    clients = {"openai": lambda p: http_openai(oa, model, p, a.output_len),
               "httpx": lambda p: http_raw(raw, model, p, a.output_len),
               "aiohttp": lambda p: http_aiohttp(session, http_url.rstrip("/") + "/completions", model, p,
                                                 a.output_len)}
    fronts = {"http": clients[a.client],
              "grpc": lambda p: grpc_one(stub, metadata, model, p, a.output_len)}
    for send in fronts.values():  # warm up both paths (connections, the model's first steps)
        await asyncio.gather(*(send(t) for t in texts[:4]))
    rounds = []
    for r in range(a.rounds):
        order = ["http", "grpc"] if r % 2 == 0 else ["grpc", "http"]
        rounds.append({front: await run_front(fronts[front], texts, starts, pids) for front in order})
        print(json.dumps({"round": r, **{f: {k: round(v, 2) for k, v in s.items()} for f, s in rounds[-1].items()}}),
              flush=True)
    await channel.close()
    await raw.aclose()
    await session.close()
    await oa.close()
    return {"args": vars(a), "rounds": rounds, "ratios": ratios(rounds)}


def ratios(rounds: list[dict]) -> dict:
    tok = [r["http"]["output_tok_per_s"] / r["grpc"]["output_tok_per_s"] for r in rounds]
    ttft = [r["http"]["ttft_p50_ms"] - r["grpc"]["ttft_p50_ms"] for r in rounds]
    cpu = {}
    for key in [k for k in rounds[0]["http"] if k.endswith("_cpu_s")]:  # CPU s per 1000 output tokens
        per_k = {f: [1000 * r[f][key] / (r[f]["output_tok_per_s"] * r[f]["duration_s"]) for r in rounds]
                 for f in ("http", "grpc")}
        cpu[key.removesuffix("_s") + "_s_per_1k_tokens"] = {f: statistics.median(v) for f, v in per_k.items()}
    return {"http_over_grpc_output_tok_per_s": tok, "http_added_ttft_p50_ms": ttft, "cpu_median": cpu,
            "median_tok_ratio": statistics.median(tok), "min_tok_ratio": min(tok), "max_tok_ratio": max(tok),
            "median_added_ttft_ms": statistics.median(ttft)}


async def with_mesh(a) -> dict:
    import yaml

    from muxserve.launcher import Mesh
    from muxserve.netutil import free_port

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    ports = {s: free_port() for s in ("redis", "router", "placer", "memmgr", "worker", "http")}
    conf = {"redis_url": f"redis://127.0.0.1:{ports['redis']}/0",
            "models": [{"name": "m", "path": str(Path(a.model).resolve()), "rate": 1.0, "cost_key": "tiny-llama"}],
            "cluster": {"device": "cpu", "nodes": 1, "devices_per_node": a.devices},
            "router": {"host": "127.0.0.1", "port": ports["router"], "http_port": ports["http"],
                       "api_keys": [a.api_key] if a.api_key else []},
            "placer": {"host": "127.0.0.1", "port": ports["placer"], "cost_table": str(Path(a.cost).resolve())},
            "memmgr": {"host": "127.0.0.1", "port": ports["memmgr"]},
            "worker": {"host": "127.0.0.1", "port": ports["worker"], "max_waiting": 4096}}
    (work / "mesh.yaml").write_text(yaml.safe_dump(conf))
    mesh = Mesh(str(work / "mesh.yaml"), log_dir=str(work / "logs"))
    try:
        await mesh.start(timeout=300)
        pids = {name: p.pid for name, p in mesh.procs.items() if name in ("router", "worker-0")}
        return await bench(a, mesh.http_url, mesh.router_address, "m", pids)
    finally:
        mesh.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models/tiny-llama"))
    ap.add_argument("--cost", default=str(ROOT / "models/tiny-llama-cost.json"), help="cost table of --model")
    ap.add_argument("--devices", type=int, default=2, help="CPU cores of the mesh's node")
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--rate", type=float, default=float("inf"), help="req/s (Poisson); inf: all at once")
    ap.add_argument("--prompt-words", type=int, default=48)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--client", choices=("aiohttp", "httpx", "openai"), default="aiohttp",
                    help="aiohttp: SSE lines read as vllm bench serve reads them; httpx: httpx's aiter_lines; "
                         "openai: AsyncOpenAI")
    ap.add_argument("--api-key", default="bench-key")
    ap.add_argument("--http-url", default=None, help="use a running deployment's HTTP API (…/v1)")
    ap.add_argument("--grpc-address", default=None, help="…and its router's gRPC address")
    ap.add_argument("--model-name", default=None, help="…and the served model's name")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)
    if a.http_url:
        out = asyncio.run(bench(a, a.http_url, a.grpc_address, a.model_name))
    else:
        out = asyncio.run(with_mesh(a))
    print(json.dumps(out["ratios"], indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
