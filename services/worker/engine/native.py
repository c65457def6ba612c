"""Native CPU kernels, built on first use with the system's C compiler (optional: torch paths otherwise).

`gemv()` returns a callable `(x [M, K] fp32, panels [P, K, w] fp32) -> y [M, P * w]` (csrc/gemv.c); `decode_layers()` the raw fused decode step of csrc/decode.c (wrapped by fused.py). Each
is None where it cannot run: not Linux, no C compiler (`$CC` or cc), torch not on GNU OpenMP, a failed
build, or MUXSERVE_NATIVE=0. One library of every csrc/*.c is compiled with -O3 -march=native -fopenmp once
per source, compiler, CPU and OpenMP runtime into $MUXSERVE_CACHE_DIR (default ~/.cache/muxserve) and linked
against the libgomp that torch has loaded, so the kernel's threads are torch's own (two OpenMP
runtimes in one process would fight over the cores). Every failure is logged once and falls back.
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
from pathlib import Path

import torch

log = logging.getLogger(__name__)
CSRC = Path(__file__).with_name("csrc")
_lock = threading.Lock()
_loaded: dict[str, object] = {}


def _torch_libgomp() -> str | None:
    """Path of the GNU OpenMP runtime mapped into this process (torch's), if any."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = sorted({line.split()[-1] for line in maps.splitlines() if "libgomp" in line and "/" in line})
    mine = [p for p in paths if p.startswith(os.path.dirname(torch.__file__))]
    return (mine or paths or [None])[0]  # torch's own copy when it ships one


def _cache_dir() -> Path:
    return Path(os.environ.get("MUXSERVE_CACHE_DIR") or Path.home() / ".cache" / "muxserve")


def _cpu_id() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    model = next((ln for ln in info.splitlines() if ln.startswith("model name")), "")
    flags = next((ln for ln in info.splitlines() if ln.startswith("flags")), "")
    return platform.machine() + model + flags


def _build(cc: str, gomp: str) -> Path:
    """Compile csrc/*.c into one library in the cache (atomically: several job processes may race) -> the .so."""
    sources = sorted(CSRC.glob("*.c"))
    text = [p.read_bytes() for p in sorted(CSRC.glob("*.[ch]"))]
    key = hashlib.sha256(b"\0".join([*text, cc.encode(), gomp.encode(), _cpu_id().encode()])).hexdigest()[:16]
    out = _cache_dir() / f"kernels-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        objs = [str(Path(tmp) / f"{src.stem}.o") for src in sources]
        for src, obj in zip(sources, objs):
            subprocess.run([cc, "-O3", "-march=native", "-fopenmp", "-fPIC", "-c", str(src), "-o", obj],
                           check=True, capture_output=True, timeout=120)
        lib = Path(tmp) / "kernels.so"
        subprocess.run([cc, "-shared", *objs, gomp, f"-Wl,-rpath,{Path(gomp).parent}", "-o", str(lib)],
                       check=True, capture_output=True, timeout=120)
        os.replace(lib, out)
    return out


def _load():
    if os.environ.get("MUXSERVE_NATIVE", "1") == "0" or not sys.platform.startswith("linux"):
        return None
    cc = shutil.which(os.environ.get("CC", "cc"))
    gomp = _torch_libgomp()
    if cc is None or gomp is None:
        log.info("native CPU kernels off (%s): using torch's matmuls", "no C compiler" if cc is None
                 else "torch is not on GNU OpenMP")
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc, gomp)))
    except (OSError, subprocess.SubprocessError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        log.warning("native CPU kernels off, the build failed (%s %s): using torch's matmuls", exc,
                    err.decode(errors="replace")[-400:])
        return None
    gemv_fn = lib.gemv_panels
    gemv_fn.restype = ctypes.c_int
    gemv_fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 4 + [ctypes.c_int]
    decode = lib.decode_layers
    decode.restype = ctypes.c_int
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    decode.argtypes = [p, i64, p, ctypes.c_float, p, p, p, i64, p, p, ctypes.c_int]
    bad_row = lib.decode_bad_row
    bad_row.restype = ctypes.c_int
    bad_row.argtypes = [p, p, i64, i64, p]
    return {"gemv": _wrap(gemv_fn), "decode": (decode, bad_row)}


def _kernel(name: str):
    with _lock:
        if "lib" not in _loaded:
            _loaded["lib"] = _load()
        lib = _loaded["lib"]
        return None if lib is None else lib[name]


def gemv():
    """The panel matrix-vector kernel as `f(x, panels) -> y`, or None (see the module docstring)."""
    return _kernel("gemv")


def decode_layers():
    """csrc/decode.c's `(decode_layers, decode_bad_row)` (ctypes; contracts in that file), or None."""
    return _kernel("decode")


def _wrap(fn):
    def gemv_panels(x: torch.Tensor, panels: torch.Tensor) -> torch.Tensor:
        """x [M, K] fp32 contiguous, panels [P, K, w] fp32 contiguous (CPU, w = 16, 32 or 64) -> y [M, P * w]."""
        (P, K, w), M = panels.shape, x.shape[0]
        y = x.new_empty(M, P * w)
        if fn(x.data_ptr(), panels.data_ptr(), y.data_ptr(), M, K, w, P, torch.get_num_threads()) != 0:
            raise ValueError(f"gemv_panels: {M} rows, panel width {w}: not a shape it takes")
        return y

    return gemv_panels
