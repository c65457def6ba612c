"""Write small Hugging Face checkpoints with random weights, offline.

No machine here reaches a model hub, so tests, benchmarks and the quick start use checkpoints
written by this module: a real Hugging Face layout (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, generation_config.json) with RANDOM weights. The text such a model writes is
meaningless; the serving path is real and any local checkpoint of a supported family works the same.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

_CORPUS = (
    "The quick brown fox jumps over the lazy dog. MuxServe serves many large language models at once "
    "on shared devices, with flexible spatial-temporal multiplexing. Popularity among served models is "
    "skewed: a few models get most requests. Prefill and decode run as separate jobs with their own "
    "compute share, over one head-wise key-value pool. Hello, world! 0123456789 ¿Qué tal? 日本語 €"
)

FAST_ARCHS = ("llama", "mistral", "qwen2")  # the engine's Llama-family fast path (tests written before the generic path)
ARCHS = FAST_ARCHS  # kept for callers; any model_type of transformers' causal-LM registry works (causal_lm_types)

# Small values for the size knobs configs of many families share (MoE experts, MLA ranks, ...); a key a config
# does not know is not passed to it.
_SMALL = dict(num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
              shared_expert_intermediate_size=32, n_shared_experts=1, kv_lora_rank=16, q_lora_rank=16,
              qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, first_k_dense_replace=1, n_group=1, topk_group=1,
              rotary_dim=8)
NO_BOS = ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe")  # families whose tokenizers add no BOS to a plain prompt
MAX_TINY_PARAMS = 20_000_000  # a tiny config that still builds a bigger model is a config this could not shrink


def causal_lm_types() -> dict[str, str]:
    """model_type -> causal-LM class name, transformers' registry (AutoModelForCausalLM)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return dict(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _accepts(cls, default, key: str) -> bool:
    import inspect

    attr = inspect.getattr_static(cls, key, None)
    if isinstance(attr, property) and attr.fset is None:
        return False  # derived from other keys (e.g. Falcon's head_dim)
    return key in inspect.signature(cls.__init__).parameters or key in getattr(cls, "attribute_map", {}) \
        or hasattr(default, key)


def tiny_config(arch: str, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, num_kv_heads: int = 2,
                intermediate_size: int = 128, max_position_embeddings: int = 1024, vocab_size: int = 384,
                sliding_window: int | None | str = "auto", **extra):
    """A small config of `arch` (a model_type): the given shapes where the config has such keys, _SMALL for the
    rest; sliding_window "auto": None for FAST_ARCHS (as before), else 8 where the config has a window."""
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[arch]
    default = cls()
    if sliding_window == "auto":
        sliding_window = None if arch in FAST_ARCHS or getattr(default, "sliding_window", None) is None else 8
    want = {**_SMALL, "hidden_size": hidden_size, "intermediate_size": intermediate_size,
            "num_hidden_layers": num_layers, "num_attention_heads": num_heads, "num_key_value_heads": num_kv_heads,
            "head_dim": hidden_size // num_heads, "max_position_embeddings": max_position_embeddings,
            "vocab_size": vocab_size, "tie_word_embeddings": False, "sliding_window": sliding_window, **extra}
    if _accepts(cls, default, "qk_rope_head_dim"):
        del want["head_dim"]  # multi-head latent attention: the config derives it from its own head dims
    return cls(**{k: v for k, v in want.items() if k in extra or _accepts(cls, default, k)})


# A minimal chat template in the style of real ones (role markers, the generation prompt, BOS first when
# the tokenizer has one), so that /v1/chat/completions works on the tiny models.
CHAT_TEMPLATE = (
    "{% if bos_token is defined and bos_token %}{{ bos_token }}{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tokenizer(vocab_size: int = 384, add_bos: bool = False, chat_template: str | None = None):
    """A byte-level BPE tokenizer trained on a small built-in corpus (any UTF-8 text encodes).

    add_bos: encoding with special tokens puts `<s>` first, as a Llama tokenizer does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    if add_bos:
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.chat_template = chat_template
    return fast


def write_tiny_checkpoint(
    path: str | Path,
    arch: str = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 1024,
    vocab_size: int = 384,
    seed: int = 0,
    dtype: str = "float32",
    chat_template: str | None = CHAT_TEMPLATE,
    max_params: int | None = None,
    **config,
) -> Path:
    """Write a random-weight checkpoint of `arch` (a model_type of transformers' causal-LM registry, e.g. "llama",
    "qwen3", "gemma2") to `path`; `config` overrides tiny_config's keys. Returns the folder. Same arguments and
    seed give the same weights. ValueError for an unknown arch or a config this cannot shrink below max_params
    (default: MAX_TINY_PARAMS, or 4x a Llama of the requested shape when that is larger).

    Like the real families, the tokenizer adds BOS to a plain prompt except for the Qwen families (NO_BOS);
    `chat_template` (None: none) is the tokenizer's chat template."""
    import torch
    import transformers

    types = causal_lm_types()
    if arch not in types:
        raise ValueError(f"unknown architecture {arch!r}; choose a model_type of {sorted(types)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size, add_bos=arch not in NO_BOS, chat_template=chat_template)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.eos_token_id)
    cfg = tiny_config(arch, hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size,
                      max_position_embeddings, len(tokenizer), **{**ids, **config})
    model_cls = getattr(transformers, types[arch])
    with torch.device("meta"):
        n = sum(p.numel() for p in model_cls(cfg).parameters())
    shaped = num_layers * (4 * hidden_size**2 + 3 * hidden_size * intermediate_size) + 2 * vocab_size * hidden_size
    if n > (max_params or max(MAX_TINY_PARAMS, 4 * shaped)):
        raise ValueError(f"{arch}: the small config still has {n / 1e6:.0f}M parameters")
    torch.manual_seed(seed)
    model = model_cls(cfg).to(getattr(torch, dtype)).eval()
    with torch.no_grad():  # random init of tiny models is near-uniform; widen it so greedy tokens differ
        for p in model.parameters():
            p.normal_(0.0, 0.2 if p.dim() > 1 else 0.05)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "README.md").write_text(
        f"# Random-weight {arch} checkpoint written by muxserve.tiny\n\n"
        "RANDOM WEIGHTS: for tests and demos only; its text is meaningless.\n"
    )
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="write a tiny random-weight HF checkpoint")
    ap.add_argument("path")
    ap.add_argument("--arch", default="llama", help="a model_type of transformers' causal-LM registry")
    ap.add_argument("--hidden-size", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    out = write_tiny_checkpoint(
        a.path, a.arch, a.hidden_size, a.layers, a.heads, a.kv_heads, a.intermediate_size, seed=a.seed
    )
    print(json.dumps({"path": str(out), "arch": a.arch}))


if __name__ == "__main__":
    main()
