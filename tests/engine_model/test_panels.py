"""Column-panel weights and the native multi-row GEMV against torch's matmul; the torch fallback."""

from __future__ import annotations

import pytest
import torch

import services.worker.engine.model as model
from services.worker.engine import native
from services.worker.engine.loader import load_weights
from services.worker.engine.panels import from_panels, out_features, panel_width, to_panels
from tests.engine_model.helpers import Driver

GEMV = native.gemv()


@pytest.fixture(autouse=True)
def native_everywhere(monkeypatch):
    """MUXSERVE_NATIVE=1: the native paths run wherever they can, whatever this machine's calibration says
    (test_calibrate.py exercises the calibration)."""
    monkeypatch.setenv("MUXSERVE_NATIVE", "1")

def test_panel_layout_round_trips():
    w = torch.randn(48, 5632)
    p = to_panels(w, (64, 32, 16))  # the AVX-512 build's widths
    assert p.shape == (88, 48, 64) and torch.equal(p[3], w[:, 192:256]) and torch.equal(from_panels(p), w)
    assert panel_width(1120, (64, 32, 16)) == 32 and panel_width(100, (64, 32, 16)) is None  # 1120 = 35 x 32
    assert to_panels(w, (16, 8)).shape == (352, 48, 16)  # the AVX2 build's
    odd = torch.randn(8, 100)
    assert to_panels(odd, (16, 8)) is odd and out_features(odd) == 100 and out_features(p) == 5632


@pytest.mark.skipif(GEMV is None, reason="no C compiler / GNU OpenMP here: the torch path is tested below")
@pytest.mark.parametrize("rows", [1, 2, 5, 8, 9, 20])
@pytest.mark.parametrize("K,N", [(64, 16), (64, 96), (300, 1024), (1024, 3072 + 128)])
def test_native_gemv_matches_matmul(rows, K, N):
    w, x = torch.randn(K, N), torch.randn(rows, K)
    default = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            y = GEMV(x, to_panels(w))
        finally:
            torch.set_num_threads(default)
        ref = (x.double() @ w.double()).float()
        assert y.shape == (rows, N) and torch.allclose(y, ref, rtol=1e-4, atol=1e-4 * K**0.5)


@pytest.mark.skipif(GEMV is None, reason="needs the native kernel")
def test_native_gemv_refuses_shapes_it_does_not_take():
    with pytest.raises(ValueError, match="not a shape it takes"):
        GEMV(torch.randn(1, 32), torch.randn(2, 32, 128))  # panels 128 wide: accumulators beyond registers


@pytest.mark.parametrize("rows", [1, 3, 9, 300])
def test_linear_over_panels_equals_the_matrix_path(rows, monkeypatch):
    w, b, x = torch.randn(256, 768), torch.randn(768), torch.randn(rows, 256)
    ref = model.linear(x, w, b)
    assert torch.allclose(model.linear(x, to_panels(w), b), ref, rtol=1e-5, atol=1e-4)
    monkeypatch.setattr(model, "GEMV", None)  # no native kernel: bmm over the panels
    assert torch.allclose(model.linear(x, to_panels(w), b), ref, rtol=1e-5, atol=1e-4)


def test_loader_uses_panels_only_where_the_kernel_runs(checkpoints):
    _, w = load_weights(checkpoints["llama"])
    assert (w["layers.0.w13"].dim() == 3) == (GEMV is not None)
    _, w16 = load_weights(checkpoints["llama"], torch.bfloat16)
    assert w16["layers.0.w13"].dim() == 2  # the kernel is fp32 only
    _, plain = load_weights(checkpoints["llama"], panels=False)
    assert torch.equal(from_panels(w["layers.0.wqkv"]), plain["layers.0.wqkv"])


def test_greedy_tokens_same_with_and_without_the_native_kernel(checkpoints, monkeypatch):
    def run():
        d = Driver(checkpoints["qwen2"], seed=4)
        d.add(0, [3, 4, 5, 6, 7])
        d.add(1, list(range(30, 41)))
        d.step({0: 5, 1: 11}, return_logits=False)
        for _ in range(8):
            d.step({0: 1, 1: 1}, return_logits=False)
        return [d.seqs[i].tokens for i in (0, 1)]

    with_kernel = run()
    monkeypatch.setattr(model, "GEMV", None)
    monkeypatch.setattr(model, "FUSED", False)  # the fused decode step runs on the same library
    assert run() == with_kernel


def test_without_a_c_compiler_the_engine_keeps_torch_matmuls(tmp_path, checkpoints):
    """A fresh process whose $CC does not exist: no kernel, no panels, a logged reason, same model."""
    import os
    import subprocess
    import sys

    code = ("import logging, sys; logging.basicConfig(level=logging.INFO)\n"
            "from services.worker.engine import native\n"
            "from services.worker.engine.loader import load_weights\n"
            "assert native.gemv() is None and native.decode_layers() is None\n"
            f"assert load_weights({str(checkpoints['llama'])!r})[1]['layers.0.w13'].dim() == 2\n")
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc"), "MUXSERVE_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=os.getcwd())
    assert out.returncode == 0, out.stderr
    assert "no C compiler" in out.stderr


@pytest.mark.skipif(GEMV is None, reason="no C compiler / GNU OpenMP here")
def test_a_kernel_variant_builds_as_its_own_library(tmp_path):
    # bench/kernel_ab.py's variants: a copy of csrc/ builds apart from the engine's library (its own key),
    # the unchanged copy is the engine's own
    isa = native.cpu_isas()[0]
    own = native.kernels(isa)
    assert native.build_from(native.CSRC, isa).key == own.key
    src = tmp_path / "csrc"
    src.mkdir()
    for f in native.CSRC.glob("*.[ch]"):
        (src / f.name).write_bytes(f.read_bytes())
    (src / "gemv.c").write_text((src / "gemv.c").read_text() + "\n/* a variant */\n")
    variant = native.build_from(src, isa)
    assert variant.key != own.key and variant.path != own.path
    w, x = torch.randn(64, 128), torch.randn(3, 64)
    p = to_panels(w, variant.widths)
    assert torch.allclose(variant.gemv(x, p), x @ w, atol=1e-4, rtol=1e-4)
