"""A Hugging Face Llama checkpoint (config.json + model.safetensors, fp32) -> an f32 GGUF for llama.cpp.

    python gguf_llama.py MODEL_DIR OUT.gguf      (run with the llama.cpp venv's python: needs gguf, numpy, safetensors)

Written with the `gguf` package directly rather than llama.cpp's convert_hf_to_gguf.py: that script
refuses tokenizers it does not know by hash (muxserve.tiny's small BPE) and models with none (the
~350M shape of bench/decode_bandwidth.py has none). The benchmark passes token ids, so the GGUF gets
a stand-in SentencePiece vocab of the checkpoint's size (<unk>, <s>, </s>, 256 byte tokens, then
placeholders) that no one tokenizes with. Weights are the same numbers: q/k rows are permuted from
HF's rotate-half RoPE layout to GGML's interleaved pairs, as convert_hf_to_gguf.py does for Llama.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """[n_head * head_dim, D] rows from rotate-half halves to interleaved pairs (convert_hf_to_gguf's permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensor_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, i, rest = hf.split(".", 3)  # model.layers.{i}.{module}.weight
    return f"blk.{i}.{NAMES[rest.rsplit('.', 1)[0]]}.weight"


def add_vocab(w: gguf.GGUFWriter, n: int, cfg: dict) -> None:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581t{i}" for i in range(n - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (n - 259)  # unknown, control, byte, normal
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens[:n])
    w.add_token_scores([0.0] * n)
    w.add_token_types(types[:n])
    w.add_bos_token_id(cfg.get("bos_token_id") or 1)
    w.add_eos_token_id(cfg.get("eos_token_id") or 2)
    w.add_add_bos_token(False)


def convert(model_dir: Path, out: Path) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    H, KV, D = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"]), cfg["hidden_size"]
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(D)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_rope_dimension_count(D // H)
    rope = cfg.get("rope_parameters") or cfg
    w.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    add_vocab(w, cfg["vocab_size"], cfg)
    tensors = load_file(str(model_dir / "model.safetensors"))
    if "lm_head.weight" not in tensors:  # tied embeddings: llama.cpp reads the table as the head too
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    for name, t in tensors.items():
        t = t.astype(np.float32)
        if name.endswith("q_proj.weight"):
            t = permute(t, H)
        elif name.endswith("k_proj.weight"):
            t = permute(t, KV)
        w.add_tensor(tensor_name(name), np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
