"""Native CPU kernels, built on first use with the system's C compiler, one library per instruction set.

`kernels(isa=None) -> Kernels | None` is the library for one ISA: `avx512`, `avx2` (+FMA) or `generic`
(portable C: SSE2 on x86-64, NEON on aarch64). Each build has its own register tiles and panel widths
(csrc/kernels.h), which the weights' layout must follow (panels.py, `Kernels.widths`). Without an argument it is
the ISA in use: MUXSERVE_NATIVE_ISA when set and this CPU runs it, else the best this CPU runs (`cpu_isas()`).
`gemv()` returns that library's `(x [M, K] fp32, panels [P, K, w] fp32) -> y [M, P * w]` (csrc/gemv.c) and
`decode_layers()` the raw fused decode step of csrc/decode.c (wrapped by fused.py).

Each is None where it cannot run: not Linux, no C compiler (`$CC` or cc), torch not on GNU OpenMP, a failed
build, or MUXSERVE_NATIVE=0. `mode()` says how the engine picks between native and torch paths: "off"
(MUXSERVE_NATIVE=0), "on" (=1: native wherever it runs) or "auto" (unset: calibrate.py measures both per
weight shape and batch size and takes the faster). A library is compiled from every csrc/*.c with -O3, the
ISA's flags and -fopenmp once per source, compiler, CPU, ISA and OpenMP runtime into $MUXSERVE_CACHE_DIR
(default ~/.cache/muxserve), and linked against the libgomp that torch has loaded, so the kernel's threads are
torch's own (two OpenMP runtimes in one process would fight over the cores). Every failure is logged once and
falls back.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)
CSRC = Path(__file__).with_name("csrc")
ISAS = ("avx512", "avx2", "generic")  # best first
FLAGS = {  # compiler flags per ISA; csrc/kernels.h picks the tiles from the macros they define
    "avx512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mtune=native"],
    "avx2": ["-mavx2", "-mfma", "-mtune=native"],
    "generic": [],
}
CPU_FLAGS = {"avx512": {"avx2", "fma", "avx512f", "avx512vl", "avx512bw", "avx512dq"}, "avx2": {"avx2", "fma"}}
ISA_CODES = {2: "avx512", 1: "avx2", 0: "generic"}  # kernel_info's return value
_lock = threading.Lock()
_loaded: dict[str, object] = {}


@dataclass(frozen=True)
class Kernels:
    """One ISA's built library: its panel widths (preferred first), tile rows per width and entry points."""

    isa: str
    widths: tuple[int, ...]
    tile_rows: tuple[int, ...]
    key: str  # hash of sources, compiler, CPU, ISA and OpenMP runtime: names the library and calibration cache
    path: Path
    gemv: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    decode: tuple  # (decode_layers, decode_bad_row), ctypes functions (contracts in csrc/decode.c)


def mode() -> str:
    """"off", "on" or "auto" from MUXSERVE_NATIVE (module docstring)."""
    v = os.environ.get("MUXSERVE_NATIVE", "").strip().lower()
    return {"0": "off", "false": "off", "off": "off", "1": "on", "true": "on", "on": "on"}.get(v, "auto")


def _cpu_flags() -> set[str]:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in info.splitlines() if ln.startswith(("flags", "Features"))), "")
    return set(line.partition(":")[2].split())


def cpu_isas() -> tuple[str, ...]:
    """The ISAs this CPU runs, best first (generic always; the x86 ones only on x86-64 with their flags)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ("generic",)
    flags = _cpu_flags()
    return tuple(i for i in ISAS if i == "generic" or CPU_FLAGS[i] <= flags)


def chosen_isa() -> str:
    """MUXSERVE_NATIVE_ISA where this CPU runs it (else logged, and ignored), else the best this CPU runs."""
    want, runs = os.environ.get("MUXSERVE_NATIVE_ISA", "").strip().lower(), cpu_isas()
    if want and want not in runs:
        log.warning("MUXSERVE_NATIVE_ISA=%s: this CPU runs only %s; using %s", want, ", ".join(runs), runs[0])
    return want if want in runs else runs[0]


def _torch_libgomp() -> str | None:
    """Path of the GNU OpenMP runtime mapped into this process (torch's), if any."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = sorted({line.split()[-1] for line in maps.splitlines() if "libgomp" in line and "/" in line})
    mine = [p for p in paths if p.startswith(os.path.dirname(torch.__file__))]
    return (mine or paths or [None])[0]  # torch's own copy when it ships one


def cache_dir() -> Path:
    return Path(os.environ.get("MUXSERVE_CACHE_DIR") or Path.home() / ".cache" / "muxserve")


def _cpu_id() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    model = next((ln for ln in info.splitlines() if ln.startswith("model name")), "")
    return platform.machine() + model + " ".join(sorted(_cpu_flags()))


def _key(cc: str, gomp: str, isa: str, src: Path = CSRC) -> str:
    text = [p.read_bytes() for p in sorted(src.glob("*.[ch]"))]
    return hashlib.sha256(b"\0".join([*text, cc.encode(), gomp.encode(), _cpu_id().encode(), isa.encode()])
                          ).hexdigest()[:16]


def _build(cc: str, gomp: str, isa: str, key: str, src: Path = CSRC) -> Path:
    """Compile src/*.c (default csrc/) for one ISA into one library in the cache (atomically: several job
    processes may race)."""
    out = cache_dir() / f"kernels-{isa}-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        objs = [str(Path(tmp) / f"{c.stem}.o") for c in sorted(src.glob("*.c"))]
        for c, obj in zip(sorted(src.glob("*.c")), objs):
            subprocess.run([cc, "-O3", *FLAGS[isa], "-fopenmp", "-fPIC", "-c", str(c), "-o", obj],
                           check=True, capture_output=True, timeout=120)
        lib = Path(tmp) / "kernels.so"
        subprocess.run([cc, "-shared", *objs, gomp, f"-Wl,-rpath,{Path(gomp).parent}", "-o", str(lib)],
                       check=True, capture_output=True, timeout=120)
        os.replace(lib, out)
    return out


def _bind(lib: ctypes.CDLL, isa: str, key: str, path: Path) -> Kernels:
    """The library's entry points with their ctypes signatures, and what kernel_info says about its tiles."""
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    info = (ctypes.c_int64 * 16)()
    lib.kernel_info.restype = ctypes.c_int
    code = lib.kernel_info(info)
    if ISA_CODES.get(code) != isa:
        raise OSError(f"library built for {isa} reports ISA {ISA_CODES.get(code, code)}")
    n = info[1]
    gemv_fn = lib.gemv_panels
    gemv_fn.restype = ctypes.c_int
    gemv_fn.argtypes = [p] * 3 + [i64] * 4 + [ctypes.c_int]
    decode = lib.decode_layers
    decode.restype = ctypes.c_int
    decode.argtypes = [p, i64, p, ctypes.c_float, p, p, p, i64, p, p, ctypes.c_int]
    bad_row = lib.decode_bad_row
    bad_row.restype = ctypes.c_int
    bad_row.argtypes = [p, p, i64, i64, p]
    return Kernels(isa, tuple(info[2:2 + n]), tuple(info[2 + n:2 + 2 * n]), key, path, _wrap(gemv_fn),
                   (decode, bad_row))


def _load(isa: str, src: Path = CSRC) -> Kernels | None:
    if not sys.platform.startswith("linux"):
        return None
    cc = shutil.which(os.environ.get("CC", "cc"))
    gomp = _torch_libgomp()
    if cc is None or gomp is None:
        log.info("native CPU kernels off (%s): using torch's matmuls", "no C compiler" if cc is None
                 else "torch is not on GNU OpenMP")
        return None
    try:
        key = _key(cc, gomp, isa, src)
        path = _build(cc, gomp, isa, key, src)
        kernels = _bind(ctypes.CDLL(str(path)), isa, key, path)
    except (OSError, subprocess.SubprocessError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        log.warning("native CPU kernels (%s) off, the build failed (%s %s): using torch's matmuls", isa, exc,
                    err.decode(errors="replace")[-400:])
        return None
    log.info("native CPU kernels: %s build (panels %s wide, tiles of %s rows), CPU runs %s", isa,
             "/".join(map(str, kernels.widths)), "/".join(map(str, kernels.tile_rows)), ", ".join(cpu_isas()))
    return kernels


def build_from(src: str | Path, isa: str) -> Kernels | None:
    """A library built from another copy of csrc/ (a kernel variant to compare; bench/kernel_ab.py), cached
    like the engine's own by the hash of its sources. Never the one the engine uses."""
    _require(isa)
    return _load(isa, Path(src))


def _require(isa: str) -> None:
    if isa not in cpu_isas():
        raise ValueError(f"this CPU does not run {isa!r} code (it runs {', '.join(cpu_isas())})")


def kernels(isa: str | None = None) -> Kernels | None:
    """The library of `isa` (one this CPU runs), or by default of the ISA in use (None when MUXSERVE_NATIVE=0)."""
    if isa is None:
        if mode() == "off":
            return None
        isa = chosen_isa()
    _require(isa)
    with _lock:
        if isa not in _loaded:
            _loaded[isa] = _load(isa)
        return _loaded[isa]


def gemv():
    """The panel matrix-vector kernel in use as `f(x, panels) -> y`, or None (see the module docstring)."""
    k = kernels()
    return None if k is None else k.gemv


def decode_layers():
    """csrc/decode.c's `(decode_layers, decode_bad_row)` in use (ctypes; contracts in that file), or None."""
    k = kernels()
    return None if k is None else k.decode


def panel_widths() -> tuple[int, ...]:
    """Panel widths of the library in use, preferred first; () without one."""
    k = kernels()
    return () if k is None else k.widths


def describe() -> str:
    """One line for benchmarks and logs: the CPU's ISAs and the native path in use."""
    k = kernels()
    native = "off" if k is None else f"{k.isa} (panels {'/'.join(map(str, k.widths))})"
    return f"CPU ISAs: {', '.join(cpu_isas())}; native kernels: {native}; MUXSERVE_NATIVE mode: {mode()}"


def _wrap(fn):
    def gemv_panels(x: torch.Tensor, panels: torch.Tensor) -> torch.Tensor:
        """x [M, K] fp32 contiguous, panels [P, K, w] fp32 contiguous (CPU, w one of the build's widths)
        -> y [M, P * w]."""
        (P, K, w), M = panels.shape, x.shape[0]
        y = x.new_empty(M, P * w)
        if fn(x.data_ptr(), panels.data_ptr(), y.data_ptr(), M, K, w, P, torch.get_num_threads()) != 0:
            raise ValueError(f"gemv_panels: {M} rows, panel width {w}: not a shape it takes")
        return y

    return gemv_panels
