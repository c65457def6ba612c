"""Load a decoder-only Hugging Face checkpoint (config.json + *.safetensors) from a local folder.

`load_weights(path, dtype, device) -> (ModelSpec, weights)`; `read_spec(path, dtype)` the spec alone. The
checkpoint's numbers come from muxserve.checkpoint (the one description every service reads); support.choose
picks the path that runs it (`spec.engine`): "fast" (the Llama family's own model code, model.py) or "generic"
(transformers' modules with the paged attention, generic.py), or refuses it naming the architecture and why.
Weights are read tensor by tensor (tensors.py), so loading never holds a shard twice, with progress logged.

Fast path: `weights` is a flat dict of plain tensors in this engine's own naming, with the projections fused and
the matrices stored [in, out] (transposed from HF's [out, in]: `x @ w` streams them faster on CPU, see model.linear):

    embed [V, D]   norm [D]   lm_head [D, V] (absent when tied: the model uses embed [V, D])
    layers.{i}.attn_norm [D]  layers.{i}.wqkv [D, (Hq + 2 Hkv) * hd]  layers.{i}.bqkv (qwen2 only)
    layers.{i}.wo [Hq * hd, D]  layers.{i}.ffn_norm [D]  layers.{i}.w13 [D, 2 I]  layers.{i}.w2 [I, D]

On the CPU in fp32, where the native kernel runs (native.py) and the calibration (calibrate.py) measured it
faster than torch's matmuls for the matrix's shape, the matrices (wqkv, wo, w13, w2, lm_head) are stored as
column panels instead, [N / wp, K, wp] for [K, N] (panels.py, wp from the plan), which decode steps of a
few sequences stream faster.

Generic path: `weights` is transformers' own state dict of the model (its names, shapes and dtype), checked
against transformers' own attention before it is returned (selfcheck.py).

The dict can be put in shared memory once and handed to several processes (model.Transformer and
generic.GenericModel build over it without copying).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import calibrate, native, support, tensors
from .hugepages import huge_copy
from .panels import MATRICES, to_panels
from .types import UnsupportedModelError

log = logging.getLogger(__name__)
PANELS = True  # CPU fp32 matrices in column panels where native.gemv runs (benchmarks switch it off)
SUPPORTED_ARCHS = support.FAST_ARCHS  # the fast path's; any other decoder-only arch goes generic (support.py)
SUPPORTED_ROPE = support.FAST_ROPE
__all__ = ["ModelSpec", "UnsupportedModelError", "load_weights", "read_spec", "share_weights", "weight_bytes"]


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
    engine: str = "fast"  # "fast": model.Transformer; "generic": generic.GenericModel (support.py)

    @property
    def rope_type(self) -> str:
        return str(dict(self.rope_scaling).get("rope_type", "default"))


def _rope(cfg: dict) -> tuple[float, tuple]:
    """(theta, scaling pairs) from either the transformers-5 `rope_parameters` or the older keys."""
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    theta = float(params.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
    rope_type = params.pop("rope_type", params.pop("type", "default")) or "default"
    if rope_type == "default":
        return theta, ()
    numeric = {k: float(v) for k, v in params.items() if isinstance(v, (int, float))}
    return theta, tuple(sorted({**numeric, "rope_type": rope_type}.items()))


def _sliding_window(cfg: dict, arch: str) -> int | None:
    window = cfg.get("sliding_window")
    if arch == "Qwen2ForCausalLM":
        return None  # support.fast_refusal sends use_sliding_window=true to the generic path
    if window is not None and window >= cfg.get("max_position_embeddings", 0):
        return None  # the window never cuts anything off
    return window


def read_spec(path: str | Path, dtype: torch.dtype = torch.float32) -> ModelSpec:
    """A ModelSpec from the checkpoint's description (weight_bytes left 0); UnsupportedModelError naming the
    architecture and why when no path can run it."""
    ck = support.describe(path)
    engine = support.choose(ck)
    cfg = ck.config
    fast = {}
    if engine == "fast":
        theta, scaling = _rope(cfg)
        fast = dict(rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=theta, rope_scaling=scaling,
                    sliding_window=_sliding_window(cfg, ck.arch),
                    qkv_bias=ck.arch == "Qwen2ForCausalLM" or bool(cfg.get("attention_bias", False)))
    return ModelSpec(
        name=Path(path).name, arch=ck.arch, num_layers=ck.num_layers, num_heads=ck.num_heads,
        num_kv_heads=ck.num_kv_heads, head_dim=ck.head_dim, hidden_size=ck.hidden_size,
        intermediate_size=ck.intermediate_size, vocab_size=ck.vocab_size, max_model_len=ck.max_model_len,
        eos_token_ids=ck.eos_token_ids, dtype=dtype, tie_word_embeddings=ck.tie_word_embeddings,
        path=str(path), engine=engine, **fast)


def _fuse(spec: ModelSpec, take):
    """Yield (name, tensor) in this engine's fused names (see the module docstring) from `take(hf_name)`,
    one layer at a time (transposed views; load_weights makes each contiguous as it comes)."""
    embed = take("model.embed_tokens.weight")
    yield "embed", embed
    yield "norm", take("model.norm.weight")
    head = take("lm_head.weight") if "lm_head.weight" in take.names else None
    if head is not None and not (spec.tie_word_embeddings and torch.equal(head, embed)):
        yield "lm_head", head.t()  # like transformers: a distinct lm_head in the file wins over tying
    for i in range(spec.num_layers):
        p, a, m = f"model.layers.{i}.", f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        yield f"layers.{i}.attn_norm", take(p + "input_layernorm.weight")
        yield f"layers.{i}.ffn_norm", take(p + "post_attention_layernorm.weight")
        yield f"layers.{i}.wqkv", torch.cat([take(a + f"{n}_proj.weight") for n in "qkv"]).t()
        if spec.qkv_bias:
            yield f"layers.{i}.bqkv", torch.cat([take(a + f"{n}_proj.bias") for n in "qkv"])
        yield f"layers.{i}.wo", take(a + "o_proj.weight").t()
        yield f"layers.{i}.w13", torch.cat([take(m + "gate_proj.weight"), take(m + "up_proj.weight")]).t()
        yield f"layers.{i}.w2", take(m + "down_proj.weight").t()


class _Take:
    """reader.take as a callable that also knows the checkpoint's tensor names."""

    def __init__(self, reader: tensors.Reader):
        self.reader, self.names = reader, set(reader.names)

    def __call__(self, name: str) -> torch.Tensor:
        return self.reader.take(name)


def weight_bytes(weights: dict[str, torch.Tensor]) -> int:
    """Bytes of the distinct tensors in `weights` (one tensor under two names counts once; a tensor's
    storage may be larger, e.g. a huge-page mapping with its alignment slack, see hugepages.py)."""
    seen = {(t.data_ptr(), t.numel() * t.element_size()) for t in weights.values()}
    return sum(n for _, n in seen)


def load_weights(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
    huge_pages: bool = True, panels: bool = True, calibration: calibrate.Calibration | None = None,
) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """Read spec and weights once, tensor by tensor; tensors are contiguous, in `dtype`, on `device`.

    Fast path, CPU: on transparent huge pages where the kernel allows, unless huge_pages=False (hugepages.py);
    fp32 matrices in column panels where `calibration` (default: the process's, calibrate.default()) plans them,
    unless panels=False (panels.py). Generic path: transformers' state dict, after selfcheck.check passed."""
    spec = read_spec(path, dtype)
    if spec.engine == "generic":
        from . import generic_load

        weights = generic_load.load(spec, device)
        return replace(spec, weight_bytes=weight_bytes(weights)), weights
    reader = tensors.Reader(path, dtype, device)
    place = huge_copy if huge_pages else (lambda t: t)
    panel = (panels and PANELS and torch.device(device).type == "cpu" and dtype == torch.float32
             and native.gemv() is not None)
    cal = (calibration or calibrate.default()) if panel else None
    weights = {k: place(_layout(k, v.contiguous(), cal)) for k, v in _fuse(spec, _Take(reader))}
    reader.close()
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
