"""The weights and requests every system of bench/cpu_engines.py gets, written once under a cache dir.

throughput: the 24M Llama of bench/engine_throughput.py (muxserve.tiny, its default shape and seed) and
its 64 requests (engine_throughput.make_requests, seed 0). decode: the ~350M Llama of
bench/decode_bandwidth.py (write_random_llama, its default shape), plus a word-level tokenizer of the
full vocab (this engine loads one; the others get token ids only). Each model also gets an f32 GGUF
(gguf_llama.py, run by the llama.cpp venv's python) when that venv exists.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
THROUGHPUT = dict(arch="llama", hidden=512, layers=8, heads=8, kv_heads=4, intermediate=1408)  # engine_throughput's defaults
DECODE = dict(layers=24, hidden=1024, heads=16, kv_heads=16, intermediate=2816, vocab=32000)  # decode_bandwidth's


def throughput_model(root: Path) -> Path:
    from muxserve.tiny import write_tiny_checkpoint

    path = root / "llama-24m"
    if not (path / "model.safetensors").exists():
        t = THROUGHPUT
        write_tiny_checkpoint(path, t["arch"], t["hidden"], t["layers"], t["heads"], t["kv_heads"], t["intermediate"],
                              seed=0, max_position_embeddings=4096, max_params=10**10)
    return path


def requests(root: Path, n: int = 64, seed: int = 0) -> Path:
    """engine_throughput's requests as JSON [[prompt ids, output tokens], ...]."""
    from engine_throughput import make_requests

    out = root / f"requests-{n}-seed{seed}.json"
    out.write_text(json.dumps(make_requests(n, seed, (16, 256), (32, 256), 384)))
    return out


def decode_model(root: Path) -> Path:
    from decode_bandwidth import write_random_llama

    path = root / "llama-350m"
    if not (path / "tokenizer.json").exists():
        write_random_llama(path, SimpleNamespace(**DECODE))
        word_level_tokenizer(DECODE["vocab"]).save_pretrained(str(path))
    return path


def word_level_tokenizer(vocab: int):
    """<unk>, <s>, </s>, then t3..t{vocab-1}: one token per id, so every id detokenizes."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(3, vocab)])}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def gguf(model: Path, python: Path) -> Path:
    """model's f32 GGUF (written by `python`, a venv with gguf + safetensors), reused when present."""
    out = model / "model-f32.gguf"
    if not out.exists():
        tmp = out.with_suffix(".part")
        subprocess.run([str(python), str(Path(__file__).with_name("gguf_llama.py")), str(model), str(tmp)], check=True)
        tmp.rename(out)
    return out
