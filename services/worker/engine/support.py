"""Which path runs a checkpoint: the Llama fast path, the generic path, or none (refused, with the reason).

`choose(ck) -> "fast" | "generic"` or raises types.UnsupportedModelError naming the architecture and why.
- The fast path (model.py + the fused native decode) takes FAST_ARCHS when the options it implements cover the
  config (RoPE default / linear / llama3, no Qwen2 sliding window); it measured faster than the generic path on
  the same checkpoints (bench/engine_throughput.py --arch, docs/benchmarks.md), so it keeps them.
- The generic path (generic.py) takes every other decoder-only causal LM whose transformers modeling code routes
  its attention through `AttentionInterface` with its kwargs and has only softmax-attention layers. What it cannot
  express is refused here from the config and the model class, before any weight is read: encoder-decoder models
  (cross-attention), layers that keep a recurrent state instead of K/V (state-space, linear attention,
  convolutions), models whose modeling code computes attention itself. Whatever passes these checks is also
  compared with transformers' own attention when it loads (selfcheck.py), which refuses what they missed.
"""

from __future__ import annotations

from muxserve.checkpoint import Checkpoint
from services.worker.engine.types import UnsupportedModelError

FAST_ARCHS = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
FAST_TYPES = ("llama", "mistral", "qwen2")  # model_types: others reuse LlamaForCausalLM's name (e.g. exaone)
FAST_ROPE = ("default", "linear", "llama3")
ATTENTION_LAYERS = ("full_attention", "sliding_attention", "attention")
FAST = True  # the fast path takes what it can (benchmarks switch it off to time the generic path on the same arch)


def fast_refusal(ck: Checkpoint) -> str | None:
    """Why the fast path cannot take `ck` (None: it can)."""
    if not FAST:
        return "the fast path is switched off (support.FAST)"
    if ck.arch not in FAST_ARCHS or ck.model_type not in FAST_TYPES:
        return f"the fast path implements {', '.join(FAST_ARCHS)} (model_type {', '.join(FAST_TYPES)})"
    cfg = ck.config
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    rope = params.get("rope_type", params.get("type", "default")) or "default"
    if rope not in FAST_ROPE:
        return f"rope type {rope!r} (the fast path implements {FAST_ROPE})"
    if ck.arch == "Qwen2ForCausalLM" and cfg.get("use_sliding_window"):
        return "Qwen2 with use_sliding_window"
    if any(t not in ("full_attention",) for t in cfg.get("layer_types") or ()):
        return "per-layer attention types"
    return None


def _model_class(ck: Checkpoint):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(ck.path)
    try:
        return config, AutoModelForCausalLM._model_mapping[type(config)]
    except KeyError:
        raise UnsupportedModelError(f"architecture {ck.arch!r} (model_type {ck.model_type!r}): transformers has no "
                                    "causal-LM class for it") from None


def config_refusal(cfg: dict) -> str | None:
    """Why the generic path cannot take a raw config.json (None: maybe it can), before it is even described."""
    text = {**cfg, **(cfg.get("text_config") or {})}
    if cfg.get("is_encoder_decoder") or text.get("is_encoder_decoder"):
        return "an encoder-decoder model: its decoder cross-attends to an encoder's output"
    layers = [*(text.get("layer_types") or ()), *(text.get("block_types") or ())]
    kinds = sorted({str(t) for t in layers if t not in ATTENTION_LAYERS})
    if kinds:
        return (f"its layers include {', '.join(kinds)}, which are not softmax attention over all past K/V "
                "(state-space, linear or sparse attention, convolutions, chunked attention): the head-wise pool "
                "holds only past K/V")
    if text.get("attention_chunk_size"):
        return "chunked attention (attention_chunk_size), which the paged attention does not mask"
    return None


def generic_refusal(ck: Checkpoint) -> str | None:
    """Why the generic path cannot take `ck` (None: it can, subject to selfcheck.py)."""
    why = config_refusal(ck.config)
    if why:
        return why
    config, cls = _model_class(ck)
    if getattr(config, "add_cross_attention", False):
        return "its decoder cross-attends to an encoder's output (add_cross_attention)"
    if not getattr(cls, "_supports_attention_backend", False):
        return (f"transformers' {cls.__name__} computes attention in its own modeling code (it does not route it "
                "through AttentionInterface with its kwargs: _supports_attention_backend is False)")
    return None


def refuse(arch: str, model_type: str, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"architecture {arch!r} (model_type {model_type!r}) is not supported: {why}")


def choose(ck: Checkpoint) -> str:
    """"fast" or "generic" for `ck`; UnsupportedModelError naming the architecture and why otherwise."""
    if fast_refusal(ck) is None:
        return "fast"
    why = generic_refusal(ck)
    if why is not None:
        raise refuse(ck.arch, ck.model_type, why)
    return "generic"


def describe(path) -> Checkpoint:
    """muxserve.checkpoint.describe, refusing (UnsupportedModelError) a config the generic path cannot take or
    that has no attention shapes (e.g. a state-space model has no attention heads)."""
    from muxserve.checkpoint import CheckpointError, describe as describe_checkpoint, read_json
    from pathlib import Path

    cfg = read_json(Path(path) / "config.json")
    arch, model_type = (cfg.get("architectures") or ["?"])[0], cfg.get("model_type", "?")
    why = config_refusal(cfg)
    if why:
        raise refuse(arch, model_type, why)
    try:
        return describe_checkpoint(path)
    except CheckpointError as e:
        raise refuse(arch, model_type, f"{e}: no softmax attention this engine could page") from None
