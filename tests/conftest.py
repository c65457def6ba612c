"""Shared fixtures: tiny random-weight checkpoints written once per session."""

from __future__ import annotations

import pytest
import torch

from muxserve.tiny import write_tiny_checkpoint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pytest_addoption(parser):
    """Device and dtype of the model parity tests (tests/engine_model): CI runs the defaults (cpu, float32);
    a GPU run is `pytest tests/engine_model --device cuda --dtype bfloat16` (docs/benchmarks.md, GPU)."""
    parser.addoption("--device", default="cpu", help="device of the engine-model parity tests (cpu, cuda)")
    parser.addoption("--dtype", default="float32", choices=sorted(DTYPES),
                     help="weights, KV pool and reference dtype of the engine-model parity tests")


@pytest.fixture(scope="session")
def device(pytestconfig) -> str:
    dev = pytestconfig.getoption("--device")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip(f"--device {dev}: CUDA is not available here")
    return dev


@pytest.fixture(scope="session")
def dtype(pytestconfig) -> torch.dtype:
    return DTYPES[pytestconfig.getoption("--dtype")]


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"), "llama", seed=1)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2", seed=2)


@pytest.fixture(scope="session")
def cpu_cost_table(tmp_path_factory, tiny_llama, tiny_qwen2):
    """A cost table measured on this machine (`muxserve profile`, a small grid) for both tiny models,
    keyed "tiny-llama" and "tiny-qwen2": mesh tests give their models these as `cost_key`."""
    from services.placer.cli import profile_main

    out = tmp_path_factory.mktemp("cost") / "cpu-cost.json"
    for key, ckpt in (("tiny-llama", tiny_llama), ("tiny-qwen2", tiny_qwen2)):
        assert profile_main(["--model", str(ckpt), "--name", key, "--out", str(out), "--devices", "1,2",
                             "--shares", "50,100", "--batches", "1,4", "--seqs", "16,64", "--reps", "1"]) == 0
    return out


@pytest.fixture(scope="session")
def cpu_probe_cache(tmp_path_factory):
    """A folder holding this machine's CPU probe (services/placer/devices.py), measured once per session as the
    placer measures it (a subprocess): placers given it as `placer.probe_cache` price own models at once."""
    from services.placer.devices import probe_cpu

    cache = tmp_path_factory.mktemp("probe")
    probe_cpu(cache)
    return cache
