"""Column-panel layout of CPU weight matrices: THE one place that defines it.

A matrix used as `x @ w` with w [K, N] is stored on the CPU (fp32) as P = N / wp contiguous panels
`[P, K, wp]`: panel p holds columns p * wp .. (p + 1) * wp - 1 of w, row by row. A decode step then
streams each panel front to back (native.gemv: one thread per panel at a time), and a batch of rows is one
bmm over the panels. The widths follow the native library's register tiles (native.Kernels.widths, e.g.
64/32/16 on AVX-512, 16/8 on AVX2): wp is the first of them dividing N; a matrix whose N has none stays [K, N].
"""

from __future__ import annotations

import torch

from . import native

MATRICES = ("wqkv", "wo", "w13", "w2", "lm_head")  # loader names (layers.{i}.<name>, lm_head)


def panel_width(n: int, widths: tuple[int, ...] | None = None) -> int | None:
    """The first of `widths` (default: the native library's in use) dividing n, or None."""
    widths = native.panel_widths() if widths is None else widths
    return next((wp for wp in widths if n % wp == 0), None)


def to_panels(w: torch.Tensor, widths: tuple[int, ...] | None = None) -> torch.Tensor:
    """w [K, N] -> [N / wp, K, wp] contiguous (or w itself when no width divides N); widths as panel_width's."""
    K, N = w.shape
    wp = panel_width(N, widths)
    if wp is None:
        return w
    return w.reshape(K, N // wp, wp).transpose(0, 1).contiguous()


def from_panels(p: torch.Tensor) -> torch.Tensor:
    """[P, K, wp] -> the [K, P * wp] matrix (a copy); a 2-D matrix is returned as it is."""
    if p.dim() == 2:
        return p
    P, K, wp = p.shape
    return p.transpose(0, 1).reshape(K, P * wp)


def out_features(w: torch.Tensor) -> int:
    """N of a matrix in either layout."""
    return w.shape[-1] if w.dim() == 2 else w.shape[0] * w.shape[2]
