"""Graceful drain on SIGTERM, against a real worker process: health turns NOT_SERVING first, the server keeps
serving through the pre-stop delay, then a running stream gets the grace to finish (status OK, every token)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from muxserve.netutil import free_port
from muxserve.serving import wait_serving
from muxserve.tiny import write_tiny_checkpoint
from muxserve.v1 import router_pb2, worker_pb2, worker_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
PRE_STOP_S = 0.5
TOKENS = 2000  # outlasts the pre-stop delay: 1000 tokens took 0.95 s under load, 2000 near 2 s quiet


def _worker(tmp: Path, model: Path, port: int) -> subprocess.Popen:
    """A worker process hosting `model` (thread jobs, no kernel calibration: a quick start)."""
    conf = {"models": [{"name": "tiny", "path": str(model)}], "drain": {"pre_stop_s": PRE_STOP_S, "grace_s": 60},
            "worker": {"models": ["tiny"], "kv": "local", "metrics_port": -1,
                       "engine": {"block_size": 8, "num_blocks": 2048, "job_mode": "thread"}}}
    (tmp / "w.yaml").write_text(yaml.safe_dump(conf))
    return subprocess.Popen([sys.executable, "-m", "muxserve.cli", "worker", "--config", str(tmp / "w.yaml"),
                             "--port", str(port), "--worker-id", "w0"], cwd=REPO,
                            stdout=open(tmp / "w.log", "wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, "MUXSERVE_NATIVE": "1"})


async def _health(stub) -> int:
    return (await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)).status


def _request(rid: str, n: int):
    return worker_pb2.WorkerGenerateRequest(request_id=rid, model="tiny", prompt_token_ids=[1, 2, 3],
                                            sampling=router_pb2.SamplingParams(max_tokens=n, ignore_eos=True))


async def _drain(address: str, proc: subprocess.Popen) -> dict:
    """Start a long stream, SIGTERM the worker after its first tokens, watch health and the stream."""
    seen = {}
    async with grpc.aio.insecure_channel(address) as ch:
        stub, health = worker_pb2_grpc.WorkerStub(ch), health_pb2_grpc.HealthStub(ch)
        call = stub.Generate(_request("long", TOKENS))
        tokens, t_first = [], None
        async for chunk in call:
            tokens += chunk.token_ids
            if t_first is None:
                t_first = time.monotonic()
                proc.terminate()  # SIGTERM with a stream running
                await asyncio.sleep(0.3)
                seen["health"] = await _health(health)  # still answering, but NOT_SERVING
                short = [c async for c in stub.Generate(_request("during-pre-stop", 2))]  # still served
                seen["short"] = sum(len(c.token_ids) for c in short)
        seen["tokens"], seen["code"] = len(tokens), await call.code()
        seen["stream_s"] = time.monotonic() - t_first
    return seen


@pytest.mark.timeout(120)
def test_sigterm_not_serving_first_then_the_stream_finishes(tmp_path):
    model = write_tiny_checkpoint(tmp_path / "long", "llama", max_position_embeddings=TOKENS + 64, chat_template=None)
    port = free_port()
    proc = _worker(tmp_path, model, port)
    try:
        asyncio.run(wait_serving(f"127.0.0.1:{port}", 90))
        seen = asyncio.run(_drain(f"127.0.0.1:{port}", proc))
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "w.log").read_text()
    assert seen["health"] == health_pb2.HealthCheckResponse.NOT_SERVING, log[-2000:]
    assert seen["short"] == 2  # the pre-stop window still serves new requests
    assert seen["code"] == grpc.StatusCode.OK and seen["tokens"] == TOKENS, (seen, log[-2000:])
    assert "pre-stop delay" in log and "running ones have 60.0s to finish" in log
    # the stream outlived the pre-stop delay, so it finished inside the grace, after the server stopped taking RPCs
    assert seen["stream_s"] > PRE_STOP_S, seen
