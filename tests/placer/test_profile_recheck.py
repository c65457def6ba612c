"""`muxserve profile` on CPU: a cell disturbed by another process (slower with more threads than with fewer) is
measured again; one that stays slower is kept. The re-measurement is injected (a table of what each look sees)."""

from __future__ import annotations

from services.placer import profiler


def cell(p: float, d: float) -> dict:
    return {"prefill": p, "decoding": d}


def table(two_threads: dict) -> dict:
    """devices -> share -> batch -> seq -> cell; (2, 100) runs 2 threads, the other points 1."""
    one = {"1": {"32": cell(70.0, 17.0)}}
    return {"1": {"50": one, "100": one}, "2": {"50": one, "100": {"1": {"32": two_threads}}}}


def test_a_disturbed_cell_is_measured_again_and_keeps_its_faster_time():
    t = table(cell(260.0, 33.0))  # a 2-thread prefill 3.7x slower than on one thread: a core was taken
    assert profiler.suspects(t) == [("2", "100", "1", "32")]
    looks = iter([cell(250.0, 16.0), cell(40.0, 18.0)])  # the next looks: still slower, then quiet
    seen = []

    def measure(n, s, b, q):
        seen.append((n, s, b, q))
        return next(looks)

    assert profiler.recheck(t, measure, pause_s=0) == []
    assert seen == [("2", "100", "1", "32")] * 2
    assert t["2"]["100"]["1"]["32"] == cell(40.0, 16.0), "each kind keeps its fastest look"


def test_a_cell_that_stays_slower_is_kept_after_the_last_look(caplog):
    t = table(cell(100.0, 17.0))
    calls = []
    left = profiler.recheck(t, lambda *key: calls.append(key) or cell(95.0, 17.0), pause_s=0)
    assert left == [("2", "100", "1", "32")] and len(calls) == profiler.LOOKS
    assert t["2"]["100"]["1"]["32"] == cell(95.0, 17.0)
    assert "stays slower" in caplog.text


def test_cells_faster_with_more_threads_are_left_alone():
    t = table(cell(40.0, 12.0))
    assert profiler.suspects(t) == [] and profiler.recheck(t, lambda *key: 1 / 0, pause_s=0) == []
