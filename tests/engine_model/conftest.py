"""Fixtures for the engine's model side: tiny random-weight fp32 checkpoints of each supported
family and the matching transformers models (helpers live in helpers.py)."""

from __future__ import annotations

import pytest

from muxserve.tiny import write_tiny_checkpoint
from tests.engine_model.helpers import ARCHS, hf_model


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """arch -> folder of a tiny checkpoint (2 layers, 4 heads, 2 KV heads, head_dim 16)."""
    root = tmp_path_factory.mktemp("engine-model-ckpt")
    return {a: write_tiny_checkpoint(root / a, a, seed=3 + i) for i, a in enumerate(ARCHS)}


@pytest.fixture(scope="session")
def hf_models(checkpoints, device, dtype):
    return {a: hf_model(p, device, dtype) for a, p in checkpoints.items()}
