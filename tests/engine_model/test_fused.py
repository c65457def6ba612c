"""The fused native decode step (fused.py, csrc/decode.c) against the engine's torch path on the same steps.

Parity with transformers itself is in test_model_vs_hf.py (`[fused]` and the config variants); here: batches
of 1, 8 and 11 rows (the GEMV's register tile is 8 rows), 1 and 2 threads, the K/V it writes, and which steps
take it."""

from __future__ import annotations

import os

import pytest
import torch

import services.worker.engine.model as model
from services.worker.engine import native
from services.worker.engine.fused import FusedLayers
from tests.engine_model.helpers import Driver

pytestmark = pytest.mark.skipif(native.decode_layers() is None, reason="needs the native kernels (C compiler)")
# every build this CPU runs; in a process forced to one (test_calibrate.py runs this file so), that one only: the
# engine binds its product kernel (model.GEMV) at import, and a wider build's panels do not fit a narrower one's
FORCED = os.environ.get("MUXSERVE_NATIVE_ISA", "").strip().lower()
ISAS = (FORCED,) if FORCED in native.cpu_isas() else native.cpu_isas()


@pytest.fixture(autouse=True)
def native_everywhere(monkeypatch):
    """MUXSERVE_NATIVE=1: the native paths run wherever they can, whatever this machine's calibration says
    (test_calibrate.py exercises the calibration)."""
    monkeypatch.setenv("MUXSERVE_NATIVE", "1")

def _decode_run(path, rows: int, fused: bool, monkeypatch, steps: int = 3, block_size: int = 4, long: int = 0):
    """rows sequences of different prompt lengths (+ `long` tokens), prefilled, then `steps` decode-only steps
    -> (driver, logits)."""
    monkeypatch.setattr(model, "FUSED", fused)
    d = Driver(path, max_tokens=long + 3 * rows + steps + 2, seed=5, block_size=block_size)
    for i in range(rows):
        d.add(i, [(7 * i + j) % 300 + 3 for j in range(2 + 3 * i + long)])  # 2 .. 2 + 3 (rows - 1) tokens
    d.step({i: len(d.seqs[i].tokens) for i in range(rows)}, return_logits=False)
    out = [d.step({i: 1 for i in range(rows)}).logits for _ in range(steps)]
    return d, torch.stack(out)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows", [1, 8, 11])
@pytest.mark.parametrize("isa", ISAS)
def test_fused_decode_equals_the_torch_path(checkpoints, rows, threads, isa, monkeypatch):
    """Every build this CPU runs (vector widths 16, 8 and 4: the exp, the score and V loops differ)."""
    monkeypatch.setenv("MUXSERVE_NATIVE_ISA", isa)
    calls = []
    real = FusedLayers.__call__
    monkeypatch.setattr(FusedLayers, "__call__",
                        lambda self, *a: calls.append((a[0].shape[0], self.isa)) or real(self, *a))
    default = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fused_d, fused_logits = _decode_run(checkpoints["qwen2"], rows, True, monkeypatch)
        torch_d, torch_logits = _decode_run(checkpoints["qwen2"], rows, False, monkeypatch)
    finally:
        torch.set_num_threads(default)
    assert calls == [(rows, isa)] * 3
    assert torch.allclose(fused_logits, torch_logits, rtol=1e-4, atol=1e-5)
    assert torch.allclose(fused_d.pool, torch_d.pool, rtol=1e-4, atol=1e-6)  # the same K/V in the same slots
    assert [s.tokens for s in fused_d.seqs.values()] == [s.tokens for s in torch_d.seqs.values()]


@pytest.fixture(scope="module")
def head_dim_64(tmp_path_factory):
    """A Llama with head_dim 64 (hidden 256, 4 heads, 2 KV heads): the kernel's vector attention paths."""
    from muxserve.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("hd64"), "llama", hidden_size=256, num_heads=4,
                                 num_kv_heads=2, intermediate_size=256, seed=8)


@pytest.mark.parametrize("block_size", [4, 16, 32, 64])
def test_fused_attention_paths_equal_the_torch_path(head_dim_64, block_size, monkeypatch):
    """Contexts of 70-90 tokens over blocks of 4 (plain loops) and 16 / 32 / 64 tokens (vector code)."""
    fused_d, fused_logits = _decode_run(head_dim_64, 3, True, monkeypatch, block_size=block_size, long=70)
    torch_d, torch_logits = _decode_run(head_dim_64, 3, False, monkeypatch, block_size=block_size, long=70)
    assert torch.allclose(fused_logits, torch_logits, rtol=1e-4, atol=1e-5)
    assert torch.allclose(fused_d.pool, torch_d.pool, rtol=1e-4, atol=1e-6)


def test_fused_decode_with_an_lm_head_that_is_no_panels(tmp_path, monkeypatch):
    """Vocab 390 (no panel width divides it): the LM head stays [D, V] and runs after the native call."""
    from muxserve.tiny import write_tiny_checkpoint

    path = write_tiny_checkpoint(tmp_path / "v390", "llama", vocab_size=390, seed=11)
    fused_d, fused_logits = _decode_run(path, 2, True, monkeypatch)
    assert fused_d.runner.model.fused.lm_head is None and fused_d.runner.model.fused.head is not None
    _, torch_logits = _decode_run(path, 2, False, monkeypatch)
    assert torch.allclose(fused_logits, torch_logits, rtol=1e-4, atol=1e-5)


def test_only_decode_only_steps_are_fused(checkpoints, monkeypatch):
    calls = []
    real = FusedLayers.__call__
    monkeypatch.setattr(FusedLayers, "__call__", lambda self, *a: calls.append(a[0].shape[0]) or real(self, *a))
    d = Driver(checkpoints["llama"], seed=6)
    d.add(0, [5, 6, 7])
    d.add(1, [8, 9])
    d.step({0: 3, 1: 2})
    d.step({0: 1, 1: 1})
    assert calls == [2]
    d.add(2, [10, 11, 12])
    d.step({0: 1, 1: 1, 2: 3})  # a prefill chunk in the step: the torch path
    assert calls == [2]
