"""The calibration's choices (calibrate.py) with injected timers, its disk cache, and the native kernels of every
instruction set this CPU runs (avx512, avx2, generic) against torch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from services.worker.engine import calibrate, native
from services.worker.engine.calibrate import BUCKETS, Calibration
from services.worker.engine.loader import load_weights
from services.worker.engine.model import Transformer
from services.worker.engine.panels import to_panels
from services.worker.engine.pool import allocate_pool

KERNELS = native.kernels(native.cpu_isas()[0])
pytestmark = pytest.mark.skipif(KERNELS is None, reason="needs the native kernels (C compiler)")


def timer_where(slow: set[str], log: list | None = None):
    """A timer that calls nothing: 1 s for the paths in `slow`, 1 ms for the others."""
    def timer(path, fn, rows):
        if log is not None:
            log.append((path, rows))
        return 1.0 if path in slow else 1e-3
    return timer


def test_a_slow_native_gemv_is_not_chosen(tmp_path, checkpoints):
    cal = Calibration(KERNELS, timer_where({"native"}), cache=tmp_path / "cal.json")
    plan = cal.plan(256, 768)
    assert plan.width is None and not any(plan.uses_native(m) for m in (1, 8, 300)) and "torch" in plan.why
    _, w = load_weights(checkpoints["llama"], calibration=cal)
    assert all(t.dim() == 2 for k, t in w.items() if k.endswith(("wqkv", "wo", "w13", "w2")))


def test_a_burst_during_the_native_timing_does_not_take_the_panels_away(tmp_path, checkpoints):
    # the first native timing of each decode bucket is inflated (another process ran); the second look is not
    calls: list = []

    def timer(path, fn, rows):
        calls.append((path, rows))
        if path == "native":
            return 1.0 if calls.count(("native", rows)) == 1 else 1e-3
        return 2e-3
    plan = Calibration(KERNELS, timer, cache=tmp_path / "cal.json").plan(256, 768)
    assert all(calls.count(("native", m)) == 2 for m in calibrate.DECODE_ROWS), "the decode buckets measured again"
    assert plan.width in KERNELS.widths and plan.uses_native(1) and plan.uses_native(8)
    cal = Calibration(KERNELS, timer_where({"native"}), cache=tmp_path / "cal2.json")
    assert cal.plan(256, 768).width is None, "a native path slow in both looks still loses"


def test_a_fast_native_gemv_is_chosen_and_bmm_only_where_it_wins(tmp_path):
    plan = Calibration(KERNELS, timer_where({"bmm", "torch"}), cache=tmp_path / "cal.json").plan(256, 768)
    assert plan.width in KERNELS.widths and all(plan.uses_native(m) for m in (1, 8, 64, 256, 1000))

    def prefill_slow(path, fn, rows):  # native wins the decode rows, loses to the bmm at 64 rows and more
        return {"native": 1e-3 if rows <= 8 else 1.0, "bmm": 1e-2, "torch": 1e-2}[path]

    plan = Calibration(KERNELS, prefill_slow, cache=tmp_path / "cal2.json").plan(256, 768)
    assert plan.width is not None and plan.uses_native(1) and plan.uses_native(8) and not plan.uses_native(9)


def test_plans_are_cached_on_disk_per_shape(tmp_path):
    calls: list = []
    first = Calibration(KERNELS, timer_where({"native"}, calls), cache=tmp_path / "cal.json").plan(128, 512)
    assert {rows for _, rows in calls} == set(BUCKETS)

    def never(path, fn, rows):
        raise AssertionError("measured again")

    assert Calibration(KERNELS, never, cache=tmp_path / "cal.json").plan(128, 512) == first
    with pytest.raises(AssertionError, match="measured again"):
        Calibration(KERNELS, never, cache=tmp_path / "cal.json").plan(128, 1024)  # another shape: measured


def test_the_real_timer_measures_within_the_budget(tmp_path):
    import time

    t0 = time.perf_counter()
    plan = Calibration(KERNELS, cache=tmp_path / "cal.json").plan(1024, 3072)
    assert time.perf_counter() - t0 < 1.0 and len(plan.native) == len(BUCKETS)


@pytest.mark.parametrize("slow", ["fused", "torch-step"])
def test_the_fused_decode_step_only_where_it_measured_faster(tmp_path, checkpoints, slow):
    calls: list = []
    cal = Calibration(KERNELS, timer_where({"bmm", "torch", slow}, calls), cache=tmp_path / "cal.json")
    spec, w = load_weights(checkpoints["llama"], calibration=cal)
    m = Transformer(spec, w, allocate_pool(64, 4, spec.head_dim, torch.float32, "cpu"), cal)
    assert ("fused", 1) in calls and ("torch-step", 8) in calls
    assert (m.fused is None) == (slow == "fused")


def test_the_fused_choice_follows_the_thread_count_of_the_step(tmp_path, checkpoints):
    # a job that started on one core may run a later dispatch on two: each count gets its own choice
    def timer(path, fn, rows):
        slow = path == "fused" and torch.get_num_threads() == 1
        return 1.0 if slow or path in ("bmm", "torch") else 1e-3
    cal = Calibration(KERNELS, timer, cache=tmp_path / "cal.json")
    spec, w = load_weights(checkpoints["llama"], calibration=cal)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        m = Transformer(spec, w, allocate_pool(64, 4, spec.head_dim, torch.float32, "cpu"), cal)
        assert m.fused is not None and m.can_fuse()
        torch.set_num_threads(1)
        assert m.fused is None and not m.can_fuse(), "at one thread the torch step measured faster"
        torch.set_num_threads(2)
        assert m.fused is not None
    finally:
        torch.set_num_threads(before)
    assert sorted(k.split("/t")[1].split("/")[0] for k in calibrate._read(tmp_path / "cal.json")
                  if k.startswith("fused/")) == ["1", "2"], "one cached entry per thread count"


def test_a_burst_during_the_fused_timing_is_measured_again(tmp_path, checkpoints):
    # one timing of the 1-row fused step is inflated (another process ran): fewer rows cannot take longer
    calls: list = []

    def timer(path, fn, rows):
        calls.append((path, rows))
        if path == "fused":
            return 0.5 if calls.count(("fused", 1)) == 1 and rows == 1 else 1e-3 * rows
        return 1.0 if path in ("bmm", "torch") else 2e-3 * rows
    cal = Calibration(KERNELS, timer, cache=tmp_path / "cal.json")
    spec, w = load_weights(checkpoints["llama"], calibration=cal)
    m = Transformer(spec, w, allocate_pool(64, 4, spec.head_dim, torch.float32, "cpu"), cal)
    assert calls.count(("fused", 1)) == 2 and calls.count(("torch-step", 32)) == 2, "measured twice"
    assert m.fused is not None, "the burst did not decide"


def test_calibrations_that_start_together_measure_one_at_a_time(tmp_path):
    import threading
    import time

    spans: list = []

    def timer(path, fn, rows):
        t0 = time.monotonic()
        time.sleep(0.01)
        spans.append((t0, time.monotonic()))
        return 1e-3 if path == "native" else 1.0
    # two processes' calibrations of one machine (own objects, one cache file) asked for the same shape at once
    cals = [Calibration(KERNELS, timer, cache=tmp_path / "cal.json") for _ in range(2)]
    plans: list = []
    threads = [threading.Thread(target=lambda c=c: plans.append(c.plan(128, 4 * KERNELS.widths[0]))) for c in cals]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert plans[0] == plans[1] and plans[0].uses_native(1)
    assert len(spans) == 3 * len(BUCKETS), "the second read what the first measured"
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), "no two timings overlap"


def test_a_plan_measured_inside_a_fused_calibration_does_not_wait_for_itself(tmp_path):
    import threading

    cal = Calibration(KERNELS, timer_where({"bmm", "torch"}), cache=tmp_path / "cal.json")
    w = 4 * KERNELS.widths[0]

    def step(rows):  # a step whose building plans a matrix not measured yet (under the same lock)
        cal.plan(96, w + rows * KERNELS.widths[0])
        return lambda: None
    done = []
    t = threading.Thread(target=lambda: done.append(cal.prefer_fused("k", step, step)), daemon=True)
    t.start()
    t.join(20)
    assert done, "the calibration deadlocked on its own lock"


def test_native_forced_on_plans_native_without_measuring(monkeypatch):
    monkeypatch.setenv("MUXSERVE_NATIVE", "1")
    plan = calibrate.default().plan(64, 4096)
    assert plan.why == "MUXSERVE_NATIVE=1" and plan.uses_native(1000)
    monkeypatch.setenv("MUXSERVE_NATIVE", "0")
    assert native.kernels() is None and calibrate.default().plan(64, 4096).width is None


@pytest.mark.parametrize("isa", native.cpu_isas())
@pytest.mark.parametrize("rows", [1, 3, 6, 7, 12, 13, 40, 150])
def test_every_isa_build_matches_matmul(isa, rows):
    k = native.kernels(isa)
    for width in k.widths:
        for K, N in ((64, width), (300, 4 * width), (1024, 3072 + 128)):
            w, x = torch.randn(K, N), torch.randn(rows, K)
            y = k.gemv(x, to_panels(w, (width,)))
            ref = (x.double() @ w.double()).float()
            assert torch.allclose(y, ref, rtol=1e-4, atol=1e-4 * K**0.5), (isa, width, K, N)


@pytest.mark.parametrize("isa", native.cpu_isas())
def test_a_large_product_in_row_blocks_matches_matmul(isa):
    # x of 1,601 x 1,024 floats (6.25 MiB): over gemv.c's X_BLOCK_MIN_BYTES, so its rows go in blocks, the
    # last one short
    k = native.kernels(isa)
    for width in k.widths:
        w, x = torch.randn(1024, 2 * width), torch.randn(1601, 1024)
        y = k.gemv(x, to_panels(w, (width,)))
        assert torch.allclose(y, (x.double() @ w.double()).float(), rtol=1e-4, atol=1e-4 * 32), (isa, width)


def test_the_isa_can_be_forced(monkeypatch):
    for isa in native.cpu_isas():
        monkeypatch.setenv("MUXSERVE_NATIVE_ISA", isa)
        assert native.kernels().isa == isa and native.panel_widths() == native.kernels(isa).widths
    with pytest.raises(ValueError, match="does not run"):
        native.kernels("no-such-isa")


@pytest.mark.parametrize("isa", [i for i in native.cpu_isas() if i != native.cpu_isas()[0]])
def test_fused_decode_and_panels_match_torch_on_the_other_isa_builds(isa):
    """test_fused.py and test_panels.py (run in-process on the best ISA) in a process forced to `isa`."""
    env = {**os.environ, "MUXSERVE_NATIVE_ISA": isa}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          "tests/engine_model/test_fused.py", "tests/engine_model/test_panels.py"],
                         env=env, capture_output=True, text=True, timeout=600, cwd=os.getcwd())
    assert out.returncode == 0, out.stdout[-3000:]


def test_a_verdict_for_torch_on_disturbed_times_is_measured_again_until_they_settle(tmp_path):
    # a native 1-row product "slower" than the 8-row one for two looks (a burst of seconds), then not
    calls: list = []

    def timer(path, fn, rows):
        calls.append((path, rows))
        if path == "native":
            return 1.0 if rows == 1 and calls.count(("native", 1)) <= 2 else 1e-3
        return 2e-3
    plan = Calibration(KERNELS, timer, cache=tmp_path / "cal.json").plan(256, 768)
    assert calls.count(("native", 1)) == 3, "a third look, once the second was still disturbed"
    assert plan.width in KERNELS.widths and plan.uses_native(1)
