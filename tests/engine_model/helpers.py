"""Helpers for the engine-model tests: the transformers reference and a small driver that runs
sequences through a ModelRunner with shuffled (non-contiguous) head-wise block ids."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from services.worker.engine.loader import load_weights
from services.worker.engine.pool import allocate_pool, blocks_for_tokens
from services.worker.engine.runner import ModelRunner
from services.worker.engine.types import SamplingParams, SeqStep, StepInput

ARCHS = ("llama", "mistral", "qwen2")
BLOCK_SIZE = 4
NUM_BLOCKS = 1024


# Largest |logit difference| to transformers in the same dtype. fp32: the same math in another order
# (seen: < 1e-7). bf16 / fp16: every op rounds to 8 / 11 mantissa bits and the two implementations round
# at different places (fused QKV, paged attention); seen on the CPU (`pytest tests/engine_model --dtype
# bfloat16`, then float16, with the tolerance set to 0 to print them): up to 1.5e-3 / 2.4e-4, a few
# units in the last place of the tiny models' largest logits (|logit| < 1). The tolerances allow ~7x that.
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def hf_model(path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()


def hf_last_logits(model, tokens: list[int]) -> torch.Tensor:
    """transformers' logits [V] (fp32, on the CPU) at the last position, recomputing the whole sequence."""
    with torch.no_grad():
        return model(torch.tensor([tokens], device=model.device)).logits[0, -1].float().cpu()


@dataclass
class Seq:
    tokens: list[int]
    table: list[int]
    computed: int = 0
    sampling: SamplingParams = field(default_factory=SamplingParams)


class Driver:
    """Runs sequences through a ModelRunner; block ids come from a shuffled free list."""

    def __init__(self, path, max_tokens: int = 64, seed: int = 0, block_size: int = BLOCK_SIZE,
                 device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.spec, weights = load_weights(path, dtype, device)
        self.pool = allocate_pool(NUM_BLOCKS, block_size, self.spec.head_dim, dtype, device)
        self.runner = ModelRunner(self.spec, weights, self.pool, block_size, device)
        self.free = list(range(NUM_BLOCKS))
        random.Random(seed).shuffle(self.free)
        self.max_tokens, self.block_size = max_tokens, block_size
        self.seqs: dict[int, Seq] = {}

    def add(self, seq_id: int, prompt: list[int]) -> None:
        n = blocks_for_tokens(self.max_tokens, self.block_size, self.spec.num_layers, self.spec.num_kv_heads)
        self.seqs[seq_id] = Seq(list(prompt), [self.free.pop() for _ in range(n)])

    def step(self, plan: dict[int, int], return_logits: bool = True):
        """plan: seq_id -> tokens to compute now. Samples where the sequence catches up."""
        steps = []
        for sid, n in plan.items():
            s = self.seqs[sid]
            chunk = s.tokens[s.computed : s.computed + n]
            done = s.computed + n == len(s.tokens)
            steps.append(SeqStep(sid, chunk, s.computed, s.table, s.sampling, want_sample=done))
        out = self.runner.execute(StepInput(self.spec.name, steps, return_logits))
        for (sid, n), tok in zip(plan.items(), out.token_ids):
            self.seqs[sid].computed += n
            if tok is not None:
                self.seqs[sid].tokens.append(tok)
        return out
