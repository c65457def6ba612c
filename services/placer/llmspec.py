"""What the placer knows about one LLM: its name, prior rate, real sizes and its cost-table key.

Sizes come from the checkpoint when the model entry has a `path` (muxserve.checkpoint: its shapes and
safetensors file sizes), or from a LLaMA architecture config when it names `size: llama-7b` (for
cluster-scale planning with no checkpoints here). The cost-table key is `cost_key` when given, else
`size`, else the model name (the profiler writes tables keyed by the served name).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from muxserve import checkpoint
from muxserve.config import ConfigError

# Published LLaMA(-1) architecture configs (fp16): the shapes, not a table keyed on served names.
LLAMA_ARCHS = {
    "llama-7b": dict(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32,
                     intermediate_size=11008, vocab_size=32000),
    "llama-13b": dict(num_hidden_layers=40, hidden_size=5120, num_attention_heads=40,
                      intermediate_size=13824, vocab_size=32000),
    "llama-30b": dict(num_hidden_layers=60, hidden_size=6656, num_attention_heads=52,
                      intermediate_size=17920, vocab_size=32000),
    "llama-65b": dict(num_hidden_layers=80, hidden_size=8192, num_attention_heads=64,
                      intermediate_size=22016, vocab_size=32000),
}


@dataclass(frozen=True)
class ModelShape:
    """What the analytic cost model (analytic.py) reads of a checkpoint: element counts, not bytes (the device
    decides the dtype it runs in)."""

    params: int          # weights
    num_layers: int
    attn_width: int      # attention heads x head_dim (FLOP per token pair and layer: 4 x this)
    kv_per_token: int    # K and V elements of one token over all layers and KV heads

    @classmethod
    def of(cls, ck: checkpoint.Checkpoint) -> "ModelShape":
        per = checkpoint.DTYPE_BYTES[ck.dtype]
        return cls(ck.weight_bytes // per, ck.num_layers, ck.num_heads * ck.head_dim, ck.kv_bytes_per_token() // per)


@dataclass(frozen=True)
class LLMSpec:
    name: str
    rate: float              # prior req/s
    weight_bytes: int
    kv_bytes_per_token: int  # K and V, all layers and KV heads
    cost_key: str
    shape: ModelShape | None = None  # for costs estimated without a measured table

    @property
    def compute_need(self) -> float:
        """MuxServe's computation requirement: rate x model weight (sort key, descending)."""
        return self.rate * self.weight_bytes


def shapes_from_config(cfg: dict) -> tuple[int, int, ModelShape]:
    """(weight bytes estimated from shapes, KV bytes per token, shape) of a HF config dict (muxserve.checkpoint)."""
    ck = checkpoint.from_config({"dtype": "float16", **cfg})
    return ck.estimated_weight_bytes(), ck.kv_bytes_per_token(), ModelShape.of(ck)


def spec_from_path(name: str, rate: float, path: str | Path, cost_key: str | None = None) -> LLMSpec:
    """Sizes of the HF folder at `path`: its weight files, and KV bytes per token from its description."""
    try:
        ck = checkpoint.describe(path)
    except FileNotFoundError:
        raise ConfigError(f"model {name!r}: no config.json in {path}") from None
    except ValueError as e:
        raise ConfigError(f"model {name!r}: {e}") from None
    return LLMSpec(name, rate, ck.weight_bytes, ck.kv_bytes_per_token(), cost_key or name, ModelShape.of(ck))


def spec_from_size(name: str, rate: float, size: str, cost_key: str | None = None) -> LLMSpec:
    if size not in LLAMA_ARCHS:
        raise ConfigError(f"model {name!r}: unknown size {size!r}; known: {sorted(LLAMA_ARCHS)}")
    weight, kv, shape = shapes_from_config(LLAMA_ARCHS[size])
    return LLMSpec(name, rate, weight, kv, cost_key or size, shape)


def load_specs(raw: dict, base: str | Path = ".", failed: dict[str, str] | None = None) -> list[LLMSpec]:
    """LLMSpecs of the raw YAML's `models` list: entries {name, path | size, rate, cost_key?}. With `failed` (a
    dict), a model whose checkpoint cannot be described (no config.json, no attention shapes: a state-space
    model) is recorded there (name -> why) and left out instead of failing the whole list."""
    items = raw.get("models")
    if not isinstance(items, list) or not items:
        raise ConfigError("`models` must be a non-empty list of {name, path or size, rate}")
    out, seen = [], set()
    for i, m in enumerate(items):
        if not isinstance(m, dict) or not m.get("name") or not (m.get("path") or m.get("size")):
            raise ConfigError(f"models[{i}] needs `name` and `path` or `size`")
        name, rate = str(m["name"]), float(m.get("rate", 1.0))
        if name in seen:
            raise ConfigError(f"models[{i}]: duplicate name {name!r}")
        if rate < 0:
            raise ConfigError(f"models[{i}] ({name}): rate must be >= 0, got {rate}")
        seen.add(name)
        try:
            out.append(_spec(m, name, rate, Path(base)))
        except ConfigError as e:
            if failed is None or not m.get("path"):
                raise
            failed[name] = str(e)
    return out


def _spec(m: dict, name: str, rate: float, base: Path) -> LLMSpec:
    key = m.get("cost_key")
    if m.get("path"):
        p = Path(os.path.expanduser(str(m["path"])))
        return spec_from_path(name, rate, p if p.is_absolute() else base / p, key or m.get("size"))
    return spec_from_size(name, rate, str(m["size"]), key)
