"""THE one description of a local Hugging Face checkpoint: what every service reads from config.json.

`describe(path) -> Checkpoint` (json only: no torch, no transformers, so the router and the placer stay light).
The engine's loader (services/worker/engine/loader.py), the router's limits (services/router/config.py), memmgr's
pool sizing (services/memmgr/sizing.py) and the placer's sizes (services/placer/llmspec.py) all take their numbers
from here, so they agree on an LLM's layers, KV heads, head_dim, context length and weight bytes.

Config keys differ between architectures (GPT-2's `n_layer`, Falcon's `num_kv_heads`, Gemma's explicit
`head_dim`, multimodal wrappers' `text_config`); `_ALIASES` maps them to one name each. A Checkpoint's KV geometry
is what the head-wise pool is sized by: one token block of the LLM costs `num_layers x num_kv_heads` head-wise
blocks of `head_dim` (services/worker/engine/pool.py). The engine checks it against what the model's attention
really receives when it loads the weights (generic.py), so a config this reads wrongly fails loudly there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "half": 2, "float": 4}

# canonical name -> config keys that mean it, first match wins
_ALIASES = {
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "num_heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "num_kv_heads": ("num_key_value_heads", "num_kv_heads", "n_head_kv", "kv_heads", "n_kv_heads"),
    "hidden_size": ("hidden_size", "n_embd", "d_model", "dim"),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size"),
    "max_model_len": ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx"),
}


class CheckpointError(ValueError):
    """config.json is missing or lacks a shape this description needs (the message names the key)."""


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint folder, as every service sees it (plain and picklable)."""

    path: str
    arch: str  # config.json `architectures[0]` (or the model_type when absent)
    model_type: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    max_model_len: int
    eos_token_ids: tuple[int, ...] = ()
    dtype: str = "float32"  # the checkpoint's own dtype (config `dtype` / `torch_dtype`)
    file_bytes: int = 0  # sum of the *.safetensors files (0: none found)
    tie_word_embeddings: bool = False
    config: dict = field(default_factory=dict, compare=False, hash=False, repr=False)  # merged raw config

    @property
    def blocks_per_token_block(self) -> int:
        """Head-wise blocks one token block costs: one per layer x KV head."""
        return self.num_layers * self.num_kv_heads

    def kv_bytes_per_token(self, dtype: str | None = None) -> int:
        """K and V of one token over all layers and KV heads, in `dtype` (default: the checkpoint's)."""
        return 2 * self.blocks_per_token_block * self.head_dim * DTYPE_BYTES[dtype or self.dtype]

    def estimated_weight_bytes(self, dtype: str | None = None) -> int:
        """Weight bytes from the shapes (a Llama-like layout: attention, a gated MLP, untied embeddings);
        an estimate for configs without weight files (cluster-scale planning)."""
        d, hd = self.hidden_size, self.head_dim
        attn = d * self.num_heads * hd * 2 + d * self.num_kv_heads * hd * 2
        params = self.num_layers * (attn + 3 * d * self.intermediate_size + 2 * d) + 2 * self.vocab_size * d + d
        return params * DTYPE_BYTES[dtype or self.dtype]

    @property
    def weight_bytes(self) -> int:
        """The weight files' size when there are files, else the estimate from the shapes."""
        return self.file_bytes or self.estimated_weight_bytes()


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _pick(cfg: dict, name: str, default=None):
    for key in _ALIASES[name]:
        if cfg.get(key) is not None:
            return cfg[key]
    if default is None:
        raise CheckpointError(f"config.json has none of {_ALIASES[name]} ({name})")
    return default


def _eos_ids(*configs: dict) -> tuple[int, ...]:
    ids: list[int] = []
    for cfg in configs:
        eos = cfg.get("eos_token_id")
        for i in eos if isinstance(eos, list) else [eos]:
            if isinstance(i, int) and i not in ids:
                ids.append(i)
    return tuple(ids)


def _dtype(cfg: dict) -> str:
    name = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32").replace("torch.", "")
    return name if name in DTYPE_BYTES else "float32"


def from_config(cfg: dict, path: str = "", generation: dict | None = None, file_bytes: int = 0) -> Checkpoint:
    """A Checkpoint from a config dict (a multimodal wrapper's `text_config` is the text model's)."""
    merged = {**cfg, **(cfg.get("text_config") or {})}
    heads = int(_pick(merged, "num_heads"))
    kv = merged.get("num_key_value_heads", None)
    kv_heads = 1 if merged.get("multi_query") and kv is None else int(_pick(merged, "num_kv_heads", heads))
    hidden = int(_pick(merged, "hidden_size"))
    if not merged.get("vocab_size"):
        raise CheckpointError("config.json has no vocab_size")
    return Checkpoint(
        path=str(path), arch=(cfg.get("architectures") or [cfg.get("model_type", "?")])[0],
        model_type=str(cfg.get("model_type", "?")), num_layers=int(_pick(merged, "num_layers")),
        num_heads=heads, num_kv_heads=kv_heads, head_dim=int(merged.get("head_dim") or hidden // heads),
        hidden_size=hidden, intermediate_size=int(_pick(merged, "intermediate_size", 4 * hidden)),
        vocab_size=int(merged["vocab_size"]), max_model_len=int(_pick(merged, "max_model_len", 2048)),
        eos_token_ids=_eos_ids(merged, generation or {}), dtype=_dtype(merged), file_bytes=file_bytes,
        tie_word_embeddings=bool(merged.get("tie_word_embeddings", cfg.get("tie_word_embeddings", False))),
        config=merged)


def describe(path: str | Path) -> Checkpoint:
    """Read `path`/config.json (+ generation_config.json and the safetensors sizes). Raises FileNotFoundError
    without config.json, CheckpointError when it lacks a needed shape."""
    path = Path(path)
    cfg = read_json(path / "config.json")
    if not cfg:
        raise FileNotFoundError(f"no config.json in {path}")
    files = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    return from_config(cfg, str(path), read_json(path / "generation_config.json"), files)
