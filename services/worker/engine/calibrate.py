"""Native kernels or torch: measured per weight shape and batch size at first use on a machine, cached on disk.

The native GEMV (native.py) is fast only where its register tiles suit the CPU; where torch's matmuls are
faster, the engine must take those. `Calibration.plan(K, N)` times, for a [K, N] fp32 matrix of random
values, the native GEMV over column panels, a bmm over the same panels and torch's own product over [K, N]
(model.matrix_product) at the row counts of BUCKETS, and returns a Plan:
  - the layout: column panels unless the native GEMV takes more than TIE_MARGIN times torch's [K, N] product
    over the decode buckets (DECODE_ROWS, the steps that are bound by reading the weights); then [K, N] and
    torch for every M. The margin: at small shapes both take microseconds and differ by noise, and panels keep
    the fused decode step possible, which prefer_fused then measures as a whole;
  - per bucket over panels: the native GEMV or the bmm, whichever was faster.
A [K, N] verdict is measured again first (decode buckets, torch first, best time per path kept): it turns the
whole model's fused decode step off, and one burst during a native timing once did that (docs/benchmarks.md).
While the times it rests on are still disturbed (a path slower at fewer rows than at more, by MONOTONE_SLACK),
it is measured again after a growing pause, up to VERDICT_LOOKS looks in all: a burst of seconds (another
process writing gigabytes) outlasts one second look.
`Calibration.prefer_fused(key, fused_step, torch_step)` does the same for a whole decode step (fused.py)
against the torch step.

Measuring stops for a shape once its time passes SHAPE_BUDGET_S (the larger buckets then take the last
measured choice), so a calibration stays well under a second per shape. Results are cached as JSON next to
the compiled library (native.cache_dir()), in a file named by the library's key (sources, compiler, CPU,
ISA), per shape and torch version (a matrix's plan: measured at the thread count of the process that first
loads it, usually the worker that then hands the weights to its job processes; a fused step's: per thread
count, measured where the model is built and again at the first step with another count): later processes on
the machine read them. Processes measure one at a time (a file lock beside the cache): jobs that start
together would otherwise time each other's work and cache what they measured. MUXSERVE_NATIVE=1
plans native everywhere without measuring, MUXSERVE_NATIVE=0 builds no library (no panels). Every choice is
logged with its times.

Tests and benchmarks inject `timer(path, fn, rows) -> seconds` (path: "native", "bmm", "torch", "fused" or
"torch-step") and a cache file of their own instead of patching this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from . import native
from .panels import panel_width, to_panels

log = logging.getLogger(__name__)
BUCKETS = (1, 8, 64, 256)  # rows measured; M rows take the choice of the first bucket >= M (the last beyond)
DECODE_ROWS = (1, 8)  # the buckets that decide the layout
FUSED_ROWS = (1, 8, 32)  # sequences of the decode steps prefer_fused times
FUSED_CONTEXT_BLOCKS = 4  # their context: this many token blocks each
MONOTONE_SLACK = 1.2  # a step timed this much slower than one of more rows was disturbed: measured again
TIE_MARGIN = 1.1  # native within this factor of torch over DECODE_ROWS keeps the panels
VERDICT_LOOKS = 4  # looks again at a [K, N] verdict while its times are disturbed ...
VERDICT_PAUSE_S = 0.1  # ... the k-th after k x this pause
SHAPE_BUDGET_S = 0.35  # measuring time per shape before the remaining buckets inherit the last choice
RUN_BUDGET_S = 0.03  # one timing: repeat the call until this much time has passed (at least 2 timed calls)
RUN_WINDOWS = 3  # ... in this many windows a few ms apart: a time slice lost to another process inflates
# every call of one window (OpenMP barriers wait for the descheduled thread), rarely all of them
Timer = Callable[[str, Callable[[], object], int], float]


@dataclass(frozen=True)
class Plan:
    """How products with one [K, N] matrix run: its layout and, over panels, which kernel per bucket."""

    K: int
    N: int
    width: int | None  # panel width; None: the matrix stays [K, N] and torch's matmuls run
    native: tuple[bool, ...]  # per BUCKETS: native GEMV (True) or bmm over the panels
    why: str

    def uses_native(self, rows: int) -> bool:
        """Whether a product of `rows` rows over the panels takes the native GEMV."""
        i = next((i for i, b in enumerate(BUCKETS) if rows <= b), len(BUCKETS) - 1)
        return self.width is not None and self.native[i]


def best_time(path: str, fn: Callable[[], object], rows: int) -> float:
    """Seconds per call of fn: one warm-up call, then the best of the calls made in RUN_WINDOWS windows
    (RUN_BUDGET_S in all, >= 2 calls each) separated by short sleeps."""
    fn()
    best = float("inf")
    for w in range(RUN_WINDOWS):
        if w:
            time.sleep(0.003)
        t_end, n = time.perf_counter() + RUN_BUDGET_S / RUN_WINDOWS, 0
        while n < 2 or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            fn()
            best, n = min(best, time.perf_counter() - t0), n + 1
    return best


class Calibration:
    """Plans for one native library (None: torch only); `timer` and `cache` replaceable (module docstring)."""

    def __init__(self, kernels: native.Kernels | None, timer: Timer = best_time, cache: Path | None = None,
                 force_native: bool = False):
        self.kernels, self.timer, self.force_native = kernels, timer, force_native
        self.cache = cache if cache is not None or kernels is None else (
            native.cache_dir() / f"calibration-{kernels.isa}-{kernels.key}.json")
        self._plans: dict[tuple[int, int], Plan] = {}
        self._lock = threading.Lock()

    def plan(self, K: int, N: int) -> Plan:
        """The Plan of a [K, N] fp32 matrix (memoized, cached on disk when measured)."""
        with self._lock:
            if (K, N) not in self._plans:
                self._plans[K, N] = plan = self._plan(K, N)
                _record(f"{K}x{N}", "native" if plan.width else "torch", plan.why)
            return self._plans[K, N]

    def _plan(self, K: int, N: int) -> Plan:
        none = len(BUCKETS) * (False,)
        if self.kernels is None:
            return Plan(K, N, None, none, "no native kernels")
        width = panel_width(N, self.kernels.widths)
        if width is None:
            return Plan(K, N, None, none, f"no panel width of {self.kernels.widths} divides {N}")
        if self.force_native:
            return Plan(K, N, width, len(BUCKETS) * (True,), "MUXSERVE_NATIVE=1")
        with self._measuring(f"gemv/{K}x{N}") as entry:
            if entry is not None:
                return Plan(K, N, entry["width"], tuple(entry["native"]), entry["why"])
            plan = self._measure(K, N, width)
            self._store(f"gemv/{K}x{N}", {k: v for k, v in asdict(plan).items() if k in ("width", "native", "why")})
        log.info("calibration (%s) of a %d x %d matrix: %s", self.kernels.isa, K, N, plan.why)
        return plan

    def _measure(self, K: int, N: int, width: int) -> Plan:
        """Times of the three products per bucket (within SHAPE_BUDGET_S) -> the Plan (module docstring)."""
        from .model import bmm_over_panels, matrix_product  # model imports this module

        g = torch.Generator().manual_seed(0)
        w = torch.randn(K, N, generator=g) * 0.02  # [K, N]
        p = to_panels(w, (width,))  # [N / width, K, width]
        products = {"native": lambda x: self.kernels.gemv(x, p), "bmm": lambda x: bmm_over_panels(x, p),
                    "torch": lambda x: matrix_product(x, w)}

        def timed(paths: tuple[str, ...], M: int) -> dict[str, float]:
            x = torch.randn(M, K, generator=g)  # [M, K]
            return {path: self.timer(path, lambda: products[path](x), M) for path in paths}

        times: dict[int, tuple[float, float, float]] = {}
        t_end = time.perf_counter() + SHAPE_BUDGET_S
        for M in BUCKETS:
            if times and time.perf_counter() > t_end:
                break
            times[M] = tuple(timed(("native", "bmm", "torch"), M).values())
        plan = _decide(K, N, width, times)
        for look in range(VERDICT_LOOKS):  # [K, N]: only if more looks at the decode buckets agree (docstring)
            if plan.width is not None or (look and _undisturbed(times)):
                break
            time.sleep(VERDICT_PAUSE_S * look)
            for M in DECODE_ROWS:
                again, (n, b, t) = timed(("torch", "native"), M), times[M]
                times[M] = (min(n, again["native"]), b, min(t, again["torch"]))
            plan = _decide(K, N, width, times)
        return plan

    def prefer_fused(self, key: str, fused_step: Callable[[int], Callable[[], object]],
                     torch_step: Callable[[int], Callable[[], object]]) -> bool:
        """Whether one decode step of each of FUSED_ROWS sequences (contexts of FUSED_CONTEXT_BLOCKS blocks) takes
        less time in total fused than on the torch path (one choice per model: the runner asks the model, not
        the batch);
        fused_step(rows) / torch_step(rows) return a step to time. key names the model's shapes (cached)."""
        if self.kernels is None:
            return False
        if self.force_native:
            return True
        with self._measuring(f"fused/{key}") as entry:
            if entry is None:
                t_f, t_t = self._step_times(fused_step, torch_step)
                win = sum(t_f) <= sum(t_t)
                entry = {"fused": win, "why": f"fused {_ms(t_f)} vs torch {_ms(t_t)} ms at {_rows(FUSED_ROWS)} "
                                              f"rows, {torch.get_num_threads()} threads"}
                self._store(f"fused/{key}", entry)
                log.info("calibration (%s) of the fused decode step of %s: %s -> %s", self.kernels.isa, key,
                         entry["why"], "fused" if win else "torch")
        _record(f"fused step {key}", "fused" if entry["fused"] else "torch", entry["why"])
        return bool(entry["fused"])

    def _step_times(self, fused_step, torch_step) -> tuple[list[float], list[float]]:
        """Seconds per step of each of FUSED_ROWS, fused and torch, interleaved (a burst of other work hits both
        paths, not one); measured again, keeping the best of each, where a path took longer at fewer rows than
        at more (at least MONOTONE_SLACK x): a step of fewer rows does less work, so that was a burst."""
        def once() -> list[tuple[float, float]]:  # (fused, torch) per row count
            return [(self.timer("fused", fused_step(r), r), self.timer("torch-step", torch_step(r), r))
                    for r in FUSED_ROWS]
        times = once()
        if not all(_monotone(list(path)) for path in zip(*times)):
            times = [(min(a[0], b[0]), min(a[1], b[1])) for a, b in zip(times, once())]
        return [t[0] for t in times], [t[1] for t in times]

    def _entry_key(self, name: str) -> str:
        how = (f"/t{torch.get_num_threads()}/r{_rows(FUSED_ROWS)}c{FUSED_CONTEXT_BLOCKS}" if name.startswith("fused/")
               else f"/r{_rows(BUCKETS)}m{TIE_MARGIN}")  # what was measured, and how
        return f"{name}{how}/torch{torch.__version__}/locked"  # entries measured one process at a time

    @contextlib.contextmanager
    def _measuring(self, name: str):
        """The cached entry of `name`, or None while this process holds the machine's calibration lock (a file
        lock beside the cache): job processes that start together measure one at a time, not each other, and
        one that waited reads what the other stored."""
        entry = self._cached(name)
        if entry is not None or self.cache is None or getattr(_held, "lock", False):
            yield entry  # held already by this thread (a fused step's scratch model planning its matrices)
            return
        try:
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.cache.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:  # an unwritable cache folder: measure unlocked (nothing is stored either)
            yield None
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _held.lock = True
            yield self._cached(name)
        finally:
            _held.lock = False
            os.close(fd)  # releases the lock

    def _cached(self, name: str) -> dict | None:
        return _read(self.cache).get(self._entry_key(name)) if self.cache else None

    def _store(self, name: str, entry: dict) -> None:
        """Merge one entry into the cache file (atomic replace: several processes may calibrate at once)."""
        if self.cache is None:
            return
        try:
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            data = {**_read(self.cache), self._entry_key(name): entry}
            fd, tmp = tempfile.mkstemp(dir=self.cache.parent, suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=0, sort_keys=True)
            os.replace(tmp, self.cache)
        except OSError as exc:
            log.warning("calibration cache %s not written: %s", self.cache, exc)


def _decide(K: int, N: int, width: int, times: dict[int, tuple[float, float, float]]) -> Plan:
    """(native, bmm, torch) seconds per measured bucket -> the Plan (module docstring)."""
    decode = [t for M, t in times.items() if M in DECODE_ROWS]
    t_native, t_torch = sum(t[0] for t in decode), sum(t[2] for t in decode)
    measured = list(times.values())
    picks = [t[0] <= t[1] for t in measured]
    picks += [picks[-1]] * (len(BUCKETS) - len(picks))  # unmeasured buckets: the last measured choice
    rows = _rows(list(times))
    detail = (f"native {_ms(t[0] for t in measured)}, bmm {_ms(t[1] for t in measured)}, "
              f"torch {_ms(t[2] for t in measured)} ms at {rows} rows")
    if t_native > TIE_MARGIN * t_torch:
        return Plan(K, N, None, len(BUCKETS) * (False,), f"torch ([K, N]): {detail}")
    kernels = ", ".join(f"{M}: {'native' if n else 'bmm'}" for M, n in zip(BUCKETS, picks))
    return Plan(K, N, width, tuple(picks), f"panels {width} wide ({kernels}): {detail}")


def _undisturbed(times: dict[int, tuple[float, float, float]]) -> bool:
    """Whether the native and the torch times rise with the rows (_monotone) over the measured buckets."""
    return all(_monotone([times[M][i] for M in sorted(times)]) for i in (0, 2))


def _monotone(times: list[float]) -> bool:
    """Whether no time exceeds the next (more rows) by more than MONOTONE_SLACK x."""
    return all(a <= MONOTONE_SLACK * b for a, b in zip(times, times[1:]))


def _ms(ts) -> str:
    return "/".join(f"{t * 1e3:.3g}" for t in ts)


def _rows(rows) -> str:
    return "/".join(map(str, rows))


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


_held = threading.local()  # .lock: this thread holds the machine's calibration lock (Calibration._measuring)
_decisions: list[dict] = []  # this process's choices, for benchmarks and logs (decisions())


def _record(what: str, path: str, why: str) -> None:
    _decisions.append({"what": what, "path": path, "why": why})


def decisions() -> list[dict]:
    """Every choice the calibrations of this process made or read: {what, path, why}, in order."""
    return list(_decisions)


_defaults: dict[tuple, Calibration] = {}
_defaults_lock = threading.Lock()


def default() -> Calibration:
    """The process's Calibration for the library in use and MUXSERVE_NATIVE's mode (read at each call)."""
    k, mode = native.kernels(), native.mode()
    key = (None if k is None else k.key, mode)
    with _defaults_lock:
        if key not in _defaults:
            _defaults[key] = Calibration(k, force_native=mode == "on")
        return _defaults[key]
