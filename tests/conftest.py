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
