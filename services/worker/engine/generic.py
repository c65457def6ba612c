"""The generic path: any decoder-only causal LM transformers builds, over the head-wise paged KV pool.

`GenericModel(spec, weights, pool)` builds transformers' own model for `spec.path`'s config (its embeddings, norms,
RoPE variants, MLPs / experts, soft-capping, q/k norms: everything but attention and the KV cache) over the given
weight tensors (no copy: process jobs share one set) and runs a FLAT batch of tokens as one sequence of T tokens
with per-token position ids. Attention is the function registered here with transformers' `AttentionInterface`
under ATTN_NAME: transformers hands it each layer's q [1, Hq, T, hd] and new k, v [1, H, T, hd] (RoPE applied), and
it writes k, v into the pool and attends over each sequence's context through its block table (attention.py),
honouring the layer's `scaling`, `softcap` and `sliding_window`. Because the mask interface knows no ATTN_NAME,
transformers builds no [T, T] mask; the per-step masks come from attention.build_context, one per distinct window.

Architectures this cannot express are refused when loading (support.py says which and why); `loader.load_weights`
also runs `selfcheck.check` on every generic load, which compares this path with transformers' own eager attention.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from .attention import AttnContext, Workspace, paged_attention
from .types import UnsupportedModelError

ATTN_NAME = "muxserve_paged"
ROUTE_LINEARS = True  # nn.Linear through model.matrix_product (route_linears; benchmarks switch it off to compare)
STEP_KWARG = "muxserve_step"  # the keyword the step state travels under, through transformers' **kwargs

# kwargs transformers' attention modules pass that do not change a softmax attention's result here
_IGNORED = {"dropout", "position_ids", "cache_position", "use_cache", "output_attentions", "is_causal",
            "layer_idx", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "cache"}


@dataclass
class PagedStep:
    """One step's attention state, shared by every layer: the pool, the contexts by sliding window (built on
    first use by `build(window)`), the thread's workspace and what the layers asked for (selfcheck reads it)."""

    pool: torch.Tensor  # [N, 2, bs, hd] (pool.py)
    build: Callable[[int | None], AttnContext]
    ws: Workspace
    kv_heads: int  # the checkpoint description's KV heads per layer (the block tables' H)
    contexts: dict = field(default_factory=dict)
    calls: list = field(default_factory=list)  # (layer_idx, kv_heads, head_dim) of each attention call
    longest: int = 0  # the longest context of the step (tokens), known once the first context is built

    def context(self, window: int | None) -> AttnContext:
        """The step's context for a layer with this sliding window; a window no context reaches past is none."""
        if None not in self.contexts:
            self.contexts[None] = self.build(None)
            self.longest = int(self.contexts[None].positions.max()) + 1
        if window is not None and window >= self.longest:
            window = None
        if window not in self.contexts:
            self.contexts[window] = self.build(window)
        return self.contexts[window]


def paged_attention_forward(module, query, key, value, attention_mask, scaling=None, sliding_window=None,
                            softcap=None, **kwargs):
    """transformers' attention-function contract: q [1, Hq, T, hd], k / v [1, H, T, hd] -> ([1, T, Hq, hd], None)."""
    step: PagedStep | None = kwargs.pop(STEP_KWARG, None)
    name = type(module).__name__
    if step is None:
        raise UnsupportedModelError(f"{name} was called without the paged step: the model does not pass attention "
                                    "kwargs through to its attention function")
    extra = sorted(k for k, v in kwargs.items() if k not in _IGNORED and v is not None and v is not False)
    if extra or attention_mask is not None:
        what = ", ".join(extra) or "its own attention mask"
        raise UnsupportedModelError(f"{name} passes {what} to its attention, which paged softmax attention over "
                                    "past K/V does not implement")
    layer = getattr(module, "layer_idx", None)
    _, Hq, T, hd = query.shape
    H = key.shape[1]
    step.calls.append((layer, H, key.shape[-1], value.shape[-1]))
    pool_hd = step.pool.shape[-1]
    if layer is None or {hd, key.shape[-1], value.shape[-1]} != {pool_hd} or H != step.kv_heads or query.shape[0] != 1:
        raise UnsupportedModelError(
            f"{name} (layer {layer}) attends with q/k/v of shapes {tuple(query.shape)}/{tuple(key.shape)}/"
            f"{tuple(value.shape)}, not the description's {step.kv_heads} KV heads of head_dim {pool_hd} for both "
            "K and V (head-wise blocks hold K and V of one head_dim)")
    q = query[0].transpose(0, 1).contiguous()  # [T, Hq, hd]
    k, v = key[0].transpose(0, 1), value[0].transpose(0, 1)  # [T, H, hd] each
    out = paged_attention(q, k, v, step.pool, layer, step.context(sliding_window), step.ws, scaling, softcap)
    return out.view(1, T, Hq, hd), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, paged_attention_forward)


_register()


def build_hf(path: str, dtype: torch.dtype, weights: dict[str, torch.Tensor] | None = None,
             attn: str = ATTN_NAME) -> torch.nn.Module:
    """transformers' causal-LM module for the checkpoint's config with attention `attn`, in eval mode; its parameters
    and persistent buffers are `weights` themselves when given (assigned, not copied), else uninitialized."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    config = AutoConfig.from_pretrained(path)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    if weights is not None:
        missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
        if unexpected or [m for m in missing if m in dict(model.named_parameters())]:
            raise ValueError(f"weights do not fit {type(model).__name__}: missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]}")
    return model.eval()


def _linear_forward(m: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """nn.Linear over a weight stored [in, out] (generic_load.transpose_linears): x [..., in] -> [..., out]."""
    from .model import matrix_product

    y = matrix_product(x.reshape(-1, x.shape[-1]), m.weight.t())  # [T, out]
    if m.bias is not None:
        y = y + m.bias
    return y.view(*x.shape[:-1], y.shape[-1])


def route_linears(model: torch.nn.Module) -> int:
    """Send the forward of each nn.Linear whose weight is stored [in, out] through model.matrix_product; returns
    how many. Instance attributes only: transformers' classes are untouched."""
    n = 0
    for m in model.modules():
        if type(m) is torch.nn.Linear and m.weight.dim() == 2 and m.weight.t().is_contiguous() \
                and not m.weight.is_contiguous():
            m.forward = functools.partial(_linear_forward, m)
            n += 1
    return n


class GenericModel:
    """transformers' model of `spec.arch` over `weights` and the pool (the same interface as model.Transformer)."""

    def __init__(self, spec, weights: dict[str, torch.Tensor], pool: torch.Tensor):
        if pool.shape[-1] != spec.head_dim or pool.dtype != spec.dtype:
            raise ValueError(f"pool (head_dim {pool.shape[-1]}, {pool.dtype}) does not fit {spec.name} "
                             f"(head_dim {spec.head_dim}, {spec.dtype})")
        self.spec, self.pool = spec, pool
        self.hf = build_hf(spec.path, spec.dtype, weights).to(pool.device)
        self.fast_linears = route_linears(self.hf) if ROUTE_LINEARS else 0
        self._local = threading.local()  # a Workspace per thread: prefill and decode jobs may share a model
        self.last_calls: list = []  # (layer, kv heads, k dim, v dim) per attention call of the last step

    @property
    def workspace(self) -> Workspace:
        ws = getattr(self._local, "ws", None)
        if ws is None:
            ws = self._local.ws = Workspace()
        return ws

    def can_fuse(self) -> bool:
        return False

    def step(self, tokens: torch.Tensor, build: Callable[[int | None], AttnContext]) -> tuple[torch.Tensor, PagedStep]:
        """tokens [T] -> (logits [B, V] fp32 at each sequence's last token, the step's state); writes K/V."""
        step = PagedStep(self.pool, build, self.workspace, self.spec.num_kv_heads)
        ctx = step.context(None)  # positions and last rows are the same in every window's context
        out = self.hf(input_ids=tokens[None], position_ids=ctx.positions[None], use_cache=False,
                      logits_to_keep=ctx.last_rows, **{STEP_KWARG: step})
        self.last_calls = step.calls
        return out.logits[0].float(), step  # [B, V]

    def forward(self, tokens: torch.Tensor, build: Callable[[int | None], AttnContext]) -> torch.Tensor:
        return self.step(tokens, build)[0]
