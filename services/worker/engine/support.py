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
FAST_ROPE = ("default", "linear", "llama3")
ATTENTION_LAYERS = ("full_attention", "sliding_attention", "attention")


def fast_refusal(ck: Checkpoint) -> str | None:
    """Why the fast path cannot take `ck` (None: it can)."""
    if ck.arch not in FAST_ARCHS:
        return f"the fast path implements {', '.join(FAST_ARCHS)}"
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


def generic_refusal(ck: Checkpoint) -> str | None:
    """Why the generic path cannot take `ck` (None: it can, subject to selfcheck.py)."""
    cfg = ck.config
    if cfg.get("is_encoder_decoder"):
        return "an encoder-decoder model: its decoder cross-attends to an encoder's output"
    kinds = sorted({str(t) for t in cfg.get("layer_types") or () if t not in ATTENTION_LAYERS})
    if kinds:
        return (f"its layers include {', '.join(kinds)}: they keep a recurrent state (state-space, linear attention "
                "or convolution), not past K/V, and the head-wise pool holds only K/V")
    if cfg.get("attention_chunk_size"):
        return "chunked attention (attention_chunk_size), which the paged attention does not mask"
    config, cls = _model_class(ck)
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "add_cross_attention", False):
        return "an encoder-decoder model: its decoder cross-attends to an encoder's output"
    if not getattr(cls, "_supports_attention_backend", False):
        return (f"transformers' {cls.__name__} computes attention in its own modeling code (it does not route it "
                "through AttentionInterface with its kwargs: _supports_attention_backend is False)")
    return None


def choose(ck: Checkpoint) -> str:
    """"fast" or "generic" for `ck`; UnsupportedModelError naming the architecture and why otherwise."""
    if fast_refusal(ck) is None:
        return "fast"
    why = generic_refusal(ck)
    if why is not None:
        raise UnsupportedModelError(f"architecture {ck.arch!r} (model_type {ck.model_type!r}) is not supported: {why}")
    return "generic"
