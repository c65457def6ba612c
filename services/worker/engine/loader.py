"""Load a decoder-only Hugging Face checkpoint (config.json + *.safetensors) from a local folder.

`load_weights(path, dtype, device) -> (ModelSpec, weights)`. `weights` is a flat dict of plain
tensors in this engine's own naming, with the projections fused and the matrices stored [in, out]
(transposed from HF's [out, in]: `x @ w` streams them faster on CPU, see model.linear):

    embed [V, D]   norm [D]   lm_head [D, V] (absent when tied: the model uses embed [V, D])
    layers.{i}.attn_norm [D]  layers.{i}.wqkv [D, (Hq + 2 Hkv) * hd]  layers.{i}.bqkv (qwen2 only)
    layers.{i}.wo [Hq * hd, D]  layers.{i}.ffn_norm [D]  layers.{i}.w13 [D, 2 I]  layers.{i}.w2 [I, D]

On the CPU in fp32, where the native kernel runs (native.py) and the calibration (calibrate.py) measured it
faster than torch's matmuls for the matrix's shape, the matrices (wqkv, wo, w13, w2, lm_head) are stored as
column panels instead, [N / wp, K, wp] for [K, N] (panels.py, wp from the plan), which decode steps of a
few sequences stream faster.

The dict can be put in shared memory once and handed to several processes (model.Transformer
builds over it without copying). Unsupported architectures fail here, naming the supported ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import calibrate, native
from .hugepages import huge_copy
from .panels import MATRICES, to_panels

PANELS = True  # CPU fp32 matrices in column panels where native.gemv runs (benchmarks switch it off)
SUPPORTED_ARCHS = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
SUPPORTED_ROPE = ("default", "linear", "llama3")


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture or one of its options is not implemented here."""


@dataclass(frozen=True)
class ModelSpec:
    """What the engine needs to know about one LLM (plain, picklable)."""

    name: str
    arch: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    max_model_len: int
    eos_token_ids: tuple[int, ...]
    dtype: torch.dtype
    weight_bytes: int = 0
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, float], ...] = ()  # sorted (key, value) pairs; () = default
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    path: str = ""

    @property
    def rope_type(self) -> str:
        return str(dict(self.rope_scaling).get("rope_type", "default"))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _rope(cfg: dict) -> tuple[float, tuple]:
    """(theta, scaling pairs) from either the transformers-5 `rope_parameters` or the older keys."""
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    theta = float(params.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
    rope_type = params.pop("rope_type", params.pop("type", "default")) or "default"
    if rope_type not in SUPPORTED_ROPE:
        raise UnsupportedModelError(f"rope type {rope_type!r} is not supported; supported: {SUPPORTED_ROPE}")
    if rope_type == "default":
        return theta, ()
    numeric = {k: float(v) for k, v in params.items() if isinstance(v, (int, float))}
    return theta, tuple(sorted({**numeric, "rope_type": rope_type}.items()))


def _eos_ids(*configs: dict) -> tuple[int, ...]:
    ids: list[int] = []
    for cfg in configs:
        eos = cfg.get("eos_token_id")
        for i in eos if isinstance(eos, list) else [eos]:
            if isinstance(i, int) and i not in ids:
                ids.append(i)
    return tuple(ids)


def _sliding_window(cfg: dict, arch: str) -> int | None:
    window = cfg.get("sliding_window")
    if arch == "Qwen2ForCausalLM":
        if cfg.get("use_sliding_window"):
            raise UnsupportedModelError("Qwen2 with use_sliding_window=true is not supported")
        return None
    if window is not None and window >= cfg.get("max_position_embeddings", 0):
        return None  # the window never cuts anything off
    return window


def read_spec(path: str | Path, dtype: torch.dtype = torch.float32) -> ModelSpec:
    """Build a ModelSpec from config.json (+ generation_config.json); weight_bytes left 0."""
    path = Path(path)
    cfg = read_json(path / "config.json")
    if not cfg:
        raise FileNotFoundError(f"no config.json in {path}")
    archs = cfg.get("architectures") or [cfg.get("model_type", "?")]
    arch = archs[0]
    if arch not in SUPPORTED_ARCHS:
        raise UnsupportedModelError(f"architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHS)}")
    heads = cfg["num_attention_heads"]
    theta, scaling = _rope(cfg)
    return ModelSpec(
        name=path.name,
        arch=arch,
        num_layers=cfg["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        vocab_size=cfg["vocab_size"],
        max_model_len=cfg.get("max_position_embeddings", 2048),
        eos_token_ids=_eos_ids(cfg, read_json(path / "generation_config.json")),
        dtype=dtype,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=_sliding_window(cfg, arch),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=arch == "Qwen2ForCausalLM" or bool(cfg.get("attention_bias", False)),
        path=str(path),
    )


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path}")
    raw: dict[str, torch.Tensor] = {}
    for f in files:
        raw.update(load_file(str(f)))
    return raw


def _fuse(spec: ModelSpec, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF names -> this engine's fused names (see the module docstring)."""
    take = raw.pop
    w = {"embed": take("model.embed_tokens.weight"), "norm": take("model.norm.weight")}
    head = raw.pop("lm_head.weight", None)
    if head is not None and not (spec.tie_word_embeddings and torch.equal(head, w["embed"])):
        w["lm_head"] = head.t()  # like transformers: a distinct lm_head in the file wins over tying
    for i in range(spec.num_layers):
        p, a, m = f"model.layers.{i}.", f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        w[f"layers.{i}.attn_norm"] = take(p + "input_layernorm.weight")
        w[f"layers.{i}.ffn_norm"] = take(p + "post_attention_layernorm.weight")
        w[f"layers.{i}.wqkv"] = torch.cat([take(a + f"{n}_proj.weight") for n in "qkv"]).t()
        if spec.qkv_bias:
            w[f"layers.{i}.bqkv"] = torch.cat([take(a + f"{n}_proj.bias") for n in "qkv"])
        w[f"layers.{i}.wo"] = take(a + "o_proj.weight").t()
        w[f"layers.{i}.w13"] = torch.cat([take(m + "gate_proj.weight"), take(m + "up_proj.weight")]).t()
        w[f"layers.{i}.w2"] = take(m + "down_proj.weight").t()
    return w  # transposed views; load_weights makes them contiguous


def weight_bytes(weights: dict[str, torch.Tensor]) -> int:
    """Bytes of the distinct tensors in `weights` (one tensor under two names counts once; a tensor's
    storage may be larger, e.g. a huge-page mapping with its alignment slack, see hugepages.py)."""
    seen = {(t.data_ptr(), t.numel() * t.element_size()) for t in weights.values()}
    return sum(n for _, n in seen)


def load_weights(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
    huge_pages: bool = True, panels: bool = True, calibration: calibrate.Calibration | None = None,
) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """Read spec and weights once; tensors are contiguous, in `dtype`, on `device` (CPU: on transparent
    huge pages where the kernel allows, unless huge_pages=False, see hugepages.py; fp32 matrices in
    column panels where `calibration` (default: the process's, calibrate.default()) plans them, unless
    panels=False, see panels.py)."""
    spec = read_spec(path, dtype)
    raw = _read_checkpoint(Path(path))
    fused = _fuse(spec, raw)
    place = huge_copy if huge_pages else (lambda t: t)
    panel = (panels and PANELS and torch.device(device).type == "cpu" and dtype == torch.float32
             and native.gemv() is not None)
    cal = (calibration or calibrate.default()) if panel else None
    weights = {k: place(_layout(k, v.to(device=device, dtype=dtype).contiguous(), cal)) for k, v in fused.items()}
    return replace(spec, weight_bytes=weight_bytes(weights)), weights


def _layout(name: str, t: torch.Tensor, cal: calibrate.Calibration | None) -> torch.Tensor:
    """CPU fp32 matrices in column panels where the calibration plans them (panels.py); the rest as it is."""
    if cal is None or name.rsplit(".", 1)[-1] not in MATRICES:
        return t
    width = cal.plan(*t.shape).width
    return t if width is None else to_panels(t, (width,))


def share_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Move CPU weights into shared memory in place (so child processes map, not copy, them)."""
    for t in weights.values():
        if t.device.type == "cpu":
            t.share_memory_()
    return weights
