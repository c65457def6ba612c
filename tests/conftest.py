"""Shared fixtures: tiny random-weight checkpoints written once per session."""

from __future__ import annotations

import pytest

from muxserve.tiny import write_tiny_checkpoint


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
