"""Fixtures for the placer tests: a real redis-server on a free port, a hand-made cost table."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time

import pytest

from services.placer.config import DEFAULT_COST_TABLE, Workload
from services.placer.costmodel import CostTable
from services.placer.estimator import UnitEstimator
from services.placer.llmspec import LLMSpec

A100 = str(DEFAULT_COST_TABLE)


def hand_table(keys=("m",), devices=(1,), batches=(1, 2, 4, 8, 16, 32), seqs=(16, 128)) -> dict:
    """Decode is memory-bound: 12 ms at 50% share, 10 ms at 100% (any batch, any context);
    prefill costs 0.01 ms. Below 50% latency scales as 1/share: 6/share ms."""
    def cells(dec):
        return {str(b): {str(q): {"prefill": 0.01, "decoding": dec} for q in seqs} for b in batches}
    return {k: {str(n): {"50": cells(12.0), "100": cells(10.0)} for n in devices} for k in keys}


def spec(name: str, rate: float, weight: int = 400, kv: int = 1, key: str = "m") -> LLMSpec:
    return LLMSpec(name, rate, weight, kv, key)


# prompt 10 + output 100 tokens: one sequence holds 110 KV bytes at 1 byte per token.
WORKLOAD = Workload(prompt_len=10, output_len=100, prefill_token_budget=2048)


def estimator(device_bytes: float = 1000, table: dict | None = None, **kw) -> UnitEstimator:
    return UnitEstimator(CostTable(table or hand_table()), WORKLOAD, device_bytes, 1.0, **kw)


@pytest.fixture
def redis_url(tmp_path):
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(5)


@pytest.fixture
def hand_table_file(tmp_path):
    path = tmp_path / "cost.json"
    path.write_text(json.dumps(hand_table(keys=("tiny",), devices=(1, 2))))
    return path
