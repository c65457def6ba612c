"""The one checkpoint description (muxserve.checkpoint) and the services that read it, dtype auto, and
tensor-by-tensor loading with progress."""

from __future__ import annotations

import logging

import pytest
import torch

from muxserve.checkpoint import CheckpointError, describe, from_config
from muxserve.tiny import write_tiny_checkpoint
from services.memmgr.sizing import _model_shape
from services.placer.llmspec import spec_from_path
from services.router.config import model_limits
from services.worker.engine.config import EngineConfig
from services.worker.engine.loader import load_weights, read_spec


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "g2", "gemma2", num_layers=3, seed=5)


def test_config_key_aliases_and_text_config():
    gpt2 = from_config({"model_type": "gpt2", "n_layer": 3, "n_head": 4, "n_embd": 64, "vocab_size": 50,
                        "n_positions": 128})
    assert (gpt2.num_layers, gpt2.num_kv_heads, gpt2.head_dim, gpt2.max_model_len) == (3, 4, 16, 128)
    falcon = from_config({"num_hidden_layers": 2, "num_attention_heads": 8, "hidden_size": 64, "vocab_size": 9,
                          "multi_query": True})
    assert falcon.num_kv_heads == 1 and falcon.blocks_per_token_block == 2
    wrapped = from_config({"architectures": ["X"], "text_config": {"num_hidden_layers": 5, "num_attention_heads": 2,
                                                                   "hidden_size": 32, "vocab_size": 7, "head_dim": 8}})
    assert (wrapped.num_layers, wrapped.head_dim, wrapped.arch) == (5, 8, "X")
    with pytest.raises(CheckpointError, match="num_heads"):
        from_config({"num_hidden_layers": 2, "hidden_size": 64, "vocab_size": 9})


def test_every_service_reads_the_same_description(gemma2):
    ck = describe(gemma2)
    spec = read_spec(gemma2)
    assert (spec.num_layers, spec.num_kv_heads, spec.head_dim) == (ck.num_layers, ck.num_kv_heads, ck.head_dim) \
        == (3, 2, 16)
    assert model_limits("g", gemma2).max_model_len == ck.max_model_len == spec.max_model_len
    assert _model_shape(str(gemma2), "float32") == (16, "float32", 3 * 2)
    assert spec_from_path("g", 1.0, gemma2).kv_bytes_per_token == 2 * 3 * 2 * 16 * 4 == ck.kv_bytes_per_token()


def test_dtype_auto(gemma2):
    assert EngineConfig(dtype="auto").resolve_dtype([str(gemma2)]).dtype == "float32"  # CPU: float32
    assert EngineConfig(dtype="bfloat16").resolve_dtype([str(gemma2)]).dtype == "bfloat16"  # asked: kept


def test_loading_reads_tensor_by_tensor_with_progress(gemma2, caplog, monkeypatch):
    from safetensors import safe_open

    import services.worker.engine.tensors as tensors

    reads = []
    real = safe_open

    class Counting:
        def __init__(self, *a, **k):
            self.h = real(*a, **k)

        def keys(self):
            return self.h.keys()

        def get_tensor(self, name):
            reads.append(name)
            return self.h.get_tensor(name)

    monkeypatch.setattr("safetensors.safe_open", Counting)
    with caplog.at_level(logging.INFO, logger=tensors.__name__):
        spec, weights = load_weights(gemma2)
    with real(str(gemma2 / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert sorted(reads) == sorted(names)  # each tensor read once, one at a time
    assert any("read shard 1/1" in r.message and "MiB" in r.message for r in caplog.records)
    assert spec.engine == "generic" and weights["model.embed_tokens.weight"].dtype == torch.float32
