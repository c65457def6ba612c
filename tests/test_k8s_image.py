"""Dockerfile.cuda (the image of deploy/k8s/overlays/gpu) is the CPU Dockerfile's twin on a CUDA base: same
sources, same torch version, same model, same entrypoint. No Docker engine runs here: this parses both."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in path.read_text().splitlines() if not l.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            op, _, rest = line.strip().partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


CPU = instructions(ROOT / "Dockerfile")
CUDA = instructions(ROOT / "Dockerfile.cuda")


def args_of(ins, op: str) -> list[str]:
    return [a for o, a in ins if o == op]


def run_words(ins) -> list[str]:
    return [w for a in args_of(ins, "RUN") for w in shlex.split(a)]


def test_every_instruction_is_a_dockerfile_instruction():
    known = {"FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "ENTRYPOINT", "CMD", "EXPOSE", "USER",
             "LABEL", "VOLUME", "HEALTHCHECK", "SHELL", "STOPSIGNAL", "ONBUILD"}
    assert {op for op, _ in CUDA} <= known
    assert CUDA[0][0] == "FROM" and len(args_of(CUDA, "FROM")) == 1


def test_cuda_base_image():
    image = args_of(CUDA, "FROM")[0]
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+(\.\d+)?-(base|runtime|cudnn-runtime|devel)-ubuntu\d+\.\d+", image)
    env = " ".join(args_of(CUDA, "ENV"))
    caps = re.search(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", env).group(1).split(",")
    assert {"compute", "utility"} <= set(caps)  # CUDA, and the MPS control daemon from the driver


def test_same_sources_entrypoint_and_torch_as_the_cpu_image():
    assert args_of(CUDA, "COPY") == args_of(CPU, "COPY")
    assert args_of(CUDA, "WORKDIR") == args_of(CPU, "WORKDIR")
    assert args_of(CUDA, "ENTRYPOINT") == args_of(CPU, "ENTRYPOINT") == ['["muxserve"]']
    pins = lambda ins: {w for w in run_words(ins) if w.startswith("torch==")}  # noqa: E731
    assert pins(CUDA) == pins(CPU) and len(pins(CPU)) == 1
    assert "cpu" not in " ".join(a for a in args_of(CUDA, "RUN") if "torch==" in a)  # not the CPU wheel
    words = run_words(CUDA)
    assert "-e" in words and words[words.index("-e") + 1] == "."  # the project itself


def test_the_tiny_model_is_written_as_in_the_cpu_image():
    tiny = lambda ins: [a[a.index("python -m muxserve.tiny"):].split("&&")[0].split()  # noqa: E731
                        for a in args_of(ins, "RUN") if "muxserve.tiny" in a]
    assert tiny(CUDA) == tiny(CPU) and tiny(CPU)


def test_python_and_muxserve_resolve_like_in_the_cpu_image():
    """The probes run `python -m muxserve.healthcheck`; the entrypoint is `muxserve` on PATH."""
    env = " ".join(args_of(CUDA, "ENV"))
    venv = re.search(r"PATH=(\S+)/bin:\$PATH", env).group(1)
    assert f"python3 -m venv {venv}" in " ".join(args_of(CUDA, "RUN"))


def test_the_gpu_overlay_runs_the_tag_dockerfile_cuda_documents():
    kust = yaml.safe_load((ROOT / "deploy" / "k8s" / "overlays" / "gpu" / "kustomization.yaml").read_text())
    image = next(i for i in kust["images"] if i["name"] == "muxserve")
    tag = f"{image['newName']}:{image['newTag']}"
    assert f"docker build -f Dockerfile.cuda -t {tag} ." in (ROOT / "Dockerfile.cuda").read_text()
