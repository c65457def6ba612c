"""The generic path checks itself against transformers' own attention when an LLM loads.

`check(spec, weights, device)` runs a few steps of two sequences through a ModelRunner on a scratch pool (a
prefill chunk beside a second prompt, then decode steps, contexts over several blocks) and compares each step's
logits with transformers' forward of the whole prefix on the same weights with its eager attention. It raises
types.UnsupportedModelError naming the architecture and what differed when
  - the model's attention never reaches the registered function, or reaches it with something it does not
    implement (generic.paged_attention_forward says what),
  - its layers' KV geometry is not the checkpoint description's (layers x KV heads x head_dim), which sizes the pool,
  - or the logits differ by more than TOLERANCE x (1 + max |logit|): the model keeps state the pool does not hold.
The check costs a few short forwards (milliseconds for tiny models, seconds for a 7B model on CPU).
"""

from __future__ import annotations

import torch

from . import generic
from .pool import allocate_pool, blocks_for_tokens
from .types import SamplingParams, SeqStep, StepInput, UnsupportedModelError

TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 3e-2, torch.float16: 1e-2}
BLOCK_SIZE = 4
PROMPTS = (11, 3)  # tokens of the two prompts (the first spans three blocks); then DECODE_STEPS steps
DECODE_STEPS = 2


def _prompts(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in PROMPTS]


def _runner(spec, weights, device):
    from .runner import ModelRunner

    n = blocks_for_tokens(max(PROMPTS) + DECODE_STEPS, BLOCK_SIZE, spec.num_layers, spec.num_kv_heads)
    pool = allocate_pool(n * len(PROMPTS), BLOCK_SIZE, spec.head_dim, spec.dtype, device)
    return ModelRunner(spec, weights, pool, BLOCK_SIZE, device), n


def _geometry(spec, calls: list) -> str | None:
    want = [(i, spec.num_kv_heads, spec.head_dim, spec.head_dim) for i in range(spec.num_layers)]
    if sorted(calls) != want:
        return (f"a step made {len(calls)} attention calls over layers {sorted({c[0] for c in calls})[:8]}, not one per "
                f"layer of the {spec.num_layers} the checkpoint describes (the pool holds one layer's K/V per call)")
    return None


@torch.inference_mode()
def _compare(spec, weights, device) -> str | None:
    runner, n = _runner(spec, weights, device)
    ref = generic.build_hf(spec.path, spec.dtype, weights, attn="eager").to(device)
    seqs = _prompts(spec.vocab_size)
    tables = [list(range(i * n, (i + 1) * n)) for i in range(len(seqs))]
    done, sp, tol = [0] * len(seqs), SamplingParams(), TOLERANCE[spec.dtype]
    for step_no in range(1 + DECODE_STEPS):
        steps = [SeqStep(i, s[done[i]:], done[i], tables[i], sp) for i, s in enumerate(seqs)]
        out = runner.execute(StepInput(spec.name, steps, return_logits=True))
        why = _geometry(spec, runner.model.last_calls) if step_no == 0 else None
        if why:
            return why
        for i, s in enumerate(seqs):
            want = ref(torch.tensor([s], device=device), use_cache=False).logits[0, -1].float().cpu()
            diff = (out.logits[i] - want).abs().max().item()
            if not diff <= tol * (1 + want.abs().max().item()):
                return (f"its logits differ from transformers' own attention by {diff:.3g} at {len(s)} tokens: its "
                        "outputs depend on more than per-token positions and past K/V (its own position ids, "
                        "masks or state)")
            done[i] = len(s)
            s.append(int(want.argmax()))
    return None


def check(spec, weights: dict[str, torch.Tensor], device: str | torch.device = "cpu") -> None:
    """Raise UnsupportedModelError (architecture and reason) unless the generic path matches transformers."""
    try:
        why = _compare(spec, weights, device)
    except UnsupportedModelError as e:
        why = str(e)
    except (TypeError, RuntimeError, ValueError, IndexError, KeyError, AttributeError) as e:
        why = f"running it on the paged attention failed: {type(e).__name__}: {e}"
    if why:
        raise UnsupportedModelError(f"architecture {spec.arch!r} is not supported on the generic path: {why}")
