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

ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
}


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
) -> Path:
    """Write a random-weight checkpoint of `arch` ("llama", "mistral" or "qwen2") to `path`.

    Returns the folder. Same arguments and seed give the same weights. Like the real families, the
    llama and mistral tokenizers add BOS to a plain prompt and qwen2's does not; `chat_template`
    (None: none) is the tokenizer's chat template.
    """
    import torch
    import transformers

    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHS)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size, add_bos=arch != "qwen2", chat_template=chat_template)
    cfg_cls, model_cls = (getattr(transformers, n) for n in ARCHS[arch])
    extra = {"sliding_window": None} if arch in ("mistral", "qwen2") else {}
    config = cfg_cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **extra,
    )
    torch.manual_seed(seed)
    model = model_cls(config).to(getattr(torch, dtype)).eval()
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
    ap.add_argument("--arch", default="llama", choices=sorted(ARCHS))
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
