"""The analytic cost estimate (services/placer/analytic.py) against measured tables (issue 13, point 2): the
MuxServe authors' A100 table, and the CPU table `muxserve profile` measures here for tiny-llama, priced with a
real probe of this machine (probe.py, run as the placer runs it: a subprocess)."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from services.placer.analytic import AnalyticCost, CostModel, build_cost
from services.placer.config import DEFAULT_COST_TABLE
from services.placer.costmodel import CostModelError, CostTable
from services.placer.devices import KNOWN_GPUS, cpu_from_probe, gpu_spec, probe_cpu
from services.placer.llmspec import spec_from_path, spec_from_size


def ratios(table: CostTable, est: AnalyticCost, key: str, which: str, devices=None) -> list[float]:
    """estimate / measured over every measured cell of `key` (on `devices` only, when given)."""
    out = []
    for n, by_share in table._raw[key].items():
        if devices and int(n) not in devices:
            continue
        for share, by_batch in by_share.items():
            for b, by_seq in by_batch.items():
                for q, cell in by_seq.items():
                    ms = cell["prefill" if which == "prefill" else "decoding"]
                    if ms > 0:
                        lookup = est.prefill_ms if which == "prefill" else est.decode_ms
                        out.append(lookup(key, int(n), int(share) / 100, int(b), int(q)) / ms)
    return out


def gmean(xs: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(x) for x in xs))


@pytest.mark.parametrize("which", ["prefill", "decode"])
def test_a100_estimate_within_2x_of_the_measured_table(which):
    table = CostTable.load(DEFAULT_COST_TABLE)
    est = AnalyticCost({k: spec_from_size(k, 1, k).shape for k in table.models()}, KNOWN_GPUS["A100-80GB"])
    rs = [r for key in table.models() for r in ratios(table, est, key, which)]
    assert len(rs) > 4000
    within = sum(0.5 <= r <= 2 for r in rs) / len(rs)
    assert within >= 0.95, f"{which}: {within:.1%} of {len(rs)} cells within 2x"
    assert 0.75 <= gmean(rs) <= 1.33


# The CPU estimate against a table profiled here is a comparison of two timings taken on a shared machine, so
# it lives in bench/cost_estimate.py (numbers in docs/placer.md), not in a test: under other load it failed
# here once at 2x while passing the next run.


def test_probe_is_cached_and_describes_this_cpu(cpu_probe_cache):
    files = list(cpu_probe_cache.glob("cpu-probe-*.json"))
    assert len(files) == 1
    p = json.loads(files[0].read_text())
    assert probe_cpu(cpu_probe_cache) == p  # read back, not measured again
    d = cpu_from_probe(p)
    assert 1e9 < d.bw < 1e12 and 1e9 < d.flops < 1e13 and d.kind == "cpu" and d.dtype_bytes == 4
    assert d.bandwidth(1 << 20) > 0 and d.decode.ms(4, 8) > 0 and d.prefill.ms(4, 64) > d.prefill.ms(4, 1)


def test_cost_model_prefers_the_table_and_estimates_the_rest(caplog, tiny_llama):
    table = CostTable.load(DEFAULT_COST_TABLE)
    specs = [spec_from_size("a", 1, "llama-7b"), spec_from_path("own", 1, tiny_llama)]
    with caplog.at_level("WARNING"):
        cost = build_cost(table, specs, "cuda", "H200")
    assert isinstance(cost, CostModel) and cost.analytic.models() == ["own"]
    assert "'own'" in caplog.text and "ANALYTIC estimate" in caplog.text and "H200" in caplog.text
    assert cost.decode_ms("llama-7b", 1, 1.0, 8, 128) == table.decode_ms("llama-7b", 1, 1.0, 8, 128)
    assert cost.supports("own", 4) and cost.max_batch("own", 1) == 256
    with pytest.raises(CostModelError):
        cost.require("nobody", "x")
    assert build_cost(table, specs[:1], "cuda").analytic is None  # nothing to estimate: no device needed


def test_estimate_follows_the_device():
    """Faster memory -> faster decode; more parameters -> slower; a smaller share -> slower."""
    shape = spec_from_size("m", 1, "llama-13b").shape
    a100, h200 = (AnalyticCost({"m": shape}, gpu_spec(g)) for g in ("A100-80GB", "H200"))
    assert h200.decode_ms("m", 1, 1.0, 1, 128) < a100.decode_ms("m", 1, 1.0, 1, 128)
    small = AnalyticCost({"m": spec_from_size("m", 1, "llama-7b").shape}, gpu_spec("A100-80GB"))
    assert small.decode_ms("m", 1, 1.0, 1, 128) < a100.decode_ms("m", 1, 1.0, 1, 128)
    assert a100.prefill_ms("m", 1, 0.3, 4, 256) > a100.prefill_ms("m", 1, 1.0, 4, 256)
    with pytest.raises(ValueError, match="known"):
        gpu_spec("B200")
