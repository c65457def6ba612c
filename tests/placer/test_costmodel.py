import json

import pytest

from services.placer.costmodel import CostModelError, CostTable
from tests.placer.conftest import A100


@pytest.fixture(scope="module")
def a100():
    return CostTable.load(A100)


def cell(key, n, share, b, q):
    return json.load(open(A100))[key][str(n)][str(share)][str(b)][str(q)]


def test_grid_points_are_exact(a100):
    assert a100.prefill_ms("llama-7b", 1, 1.0, 1, 128) == pytest.approx(16.023)
    assert a100.decode_ms("llama-7b", 1, 1.0, 1, 128) == pytest.approx(11.49)


def test_interpolates_linearly_in_share_batch_and_seq(a100):
    k = "llama-13b"
    mid_share = (cell(k, 2, 50, 8, 128)["decoding"] + cell(k, 2, 60, 8, 128)["decoding"]) / 2
    assert a100.decode_ms(k, 2, 0.55, 8, 128) == pytest.approx(mid_share)
    mid_batch = (cell(k, 2, 100, 8, 128)["prefill"] + cell(k, 2, 100, 16, 128)["prefill"]) / 2
    assert a100.prefill_ms(k, 2, 1.0, 12, 128) == pytest.approx(mid_batch)
    mid_seq = (cell(k, 2, 100, 8, 64)["decoding"] + cell(k, 2, 100, 8, 128)["decoding"]) / 2
    assert a100.decode_ms(k, 2, 1.0, 8, 96) == pytest.approx(mid_seq)
    # not a step function: strictly between its neighbours
    lo, hi = cell(k, 2, 100, 8, 128)["prefill"], cell(k, 2, 100, 16, 128)["prefill"]
    assert lo < a100.prefill_ms(k, 2, 1.0, 9, 128) < hi


def test_below_smallest_share_scales_inverse(a100):
    at30 = a100.decode_ms("llama-7b", 1, 0.3, 4, 128)
    assert a100.decode_ms("llama-7b", 1, 0.15, 4, 128) == pytest.approx(2 * at30)


def test_unmeasured_entries_are_extrapolated_along_batch(a100):
    assert cell("llama-7b", 1, 100, 256, 512)["prefill"] == -1
    v = a100.prefill_ms("llama-7b", 1, 1.0, 256, 512)
    assert v > cell("llama-7b", 1, 100, 128, 512)["prefill"] > 0


def test_missing_model_and_device_count_are_named(a100):
    with pytest.raises(CostModelError, match="llama-99b"):
        a100.require("llama-99b")
    with pytest.raises(CostModelError, match="3 devices"):
        a100.decode_ms("llama-7b", 3, 1.0, 1, 128)
    assert a100.device_counts("llama-30b") == [2, 4]
    assert not a100.supports("llama-65b", 2)


def test_bad_files(tmp_path):
    with pytest.raises(CostModelError, match="not found"):
        CostTable.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CostModelError, match="invalid JSON"):
        CostTable.load(tmp_path / "bad.json")
