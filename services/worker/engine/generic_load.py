"""Weights of a generic-path LLM: transformers' own state dict, read tensor by tensor, then self-checked.

`load(spec, device) -> weights` (HF names -> tensors in spec.dtype on device). The checkpoint's tensors are read one
at a time (tensors.Reader) straight into transformers' parameter names when the file uses them (what
`save_pretrained` writes for most architectures); a checkpoint in another layout (e.g. per-expert MoE tensors that
transformers 5 fuses when it loads) goes through transformers' own `from_pretrained`, which converts it. Tied
parameters are one tensor under both names. Before returning, selfcheck.check runs the generic path against
transformers' own attention on these weights and refuses the architecture if they disagree.
"""

from __future__ import annotations

import logging

import torch

from . import generic, selfcheck, tensors

log = logging.getLogger(__name__)


def _direct(model: torch.nn.Module, reader: tensors.Reader) -> bool:
    """Assign the file's tensors to the model's parameters by name; False (nothing assigned) when the file uses
    other names or leaves a parameter that tying does not fill."""
    if not set(reader.names) <= set(model.state_dict()):
        return False
    weights = {n: reader.take(n) for n in reader.names}
    model.load_state_dict(weights, strict=False, assign=True)
    model.tie_weights()
    loaded = {t.data_ptr() for t in weights.values()}
    return all(p.data_ptr() in loaded for p in model.parameters())


def _state(path: str, dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
    model = generic.build_hf(path, dtype)  # uninitialized parameters (no pages touched)
    reader = tensors.Reader(path, dtype, device)
    direct = _direct(model, reader)
    reader.close()
    if not direct:
        from transformers import AutoModelForCausalLM

        log.info("%s: the checkpoint's tensors are not the model's by name; loading through transformers", path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.to(device)
    transpose_linears(model)
    return dict(model.state_dict())


def transpose_linears(model: torch.nn.Module) -> None:
    """Store each untied nn.Linear weight [out, in] as a contiguous [in, out] tensor, the module's `weight` its
    transposed view (same values and shape for transformers' code): generic.GenericModel multiplies `x @ w` with
    model.matrix_product, which on CPU streams a [K, N] matrix on all threads (model.py), where nn.Linear with a
    few rows reads the [out, in] weight far slower (docs/benchmarks.md, generic path)."""
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[p.data_ptr()] = uses.get(p.data_ptr(), 0) + 1
    for m in model.modules():
        w = getattr(m, "weight", None)
        if type(m) is torch.nn.Linear and w is not None and w.dim() == 2 and uses[w.data_ptr()] == 1:
            m.weight = torch.nn.Parameter(w.detach().t().contiguous().t(), requires_grad=False)


def load(spec, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The generic path's weights for `spec` on `device`; types.UnsupportedModelError if selfcheck refuses them."""
    weights = _state(spec.path, spec.dtype, device)
    selfcheck.check(spec, weights, device)
    return weights
