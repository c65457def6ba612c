"""How a layer turns q.k into attention logits (the paged attention's one variation point, attention.py).

`Scores(scale, softcap)`: scores are q.k x scale (None: head_dim ** -0.5), then, where the model soft-caps them
(Gemma 2), softcap x tanh(s / softcap) before the mask. `softcapped` is SDPA's math for the capped case (SDPA
has no softcap argument).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Scores:
    """`scale` (None: hd ** -0.5) and `softcap` (None or 0: no capping) of one layer's scores."""

    scale: float | None = None
    softcap: float | None = None

    def factor(self, hd: int) -> float:
        return hd**-0.5 if self.scale is None else self.scale

    def cap(self, s: torch.Tensor) -> torch.Tensor:
        return s if not self.softcap else torch.tanh(s / self.softcap) * self.softcap


PLAIN = Scores()


def softcapped(qp: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, mask: torch.Tensor | None,
               sc: Scores) -> torch.Tensor:
    """SDPA with soft-capped scores (SDPA has no softcap): qp [Bg, Hq, Qm, hd], kc / vc [Bg, H, C, hd]
    -> [Bg, Hq, Qm, hd]."""
    (Bg, Hq, Qm, hd), H = qp.shape, kc.shape[1]
    qg = qp.reshape(Bg, H, Hq // H * Qm, hd)  # query heads of one KV head together: [Bg, H, G * Qm, hd]
    s = sc.cap(torch.matmul(qg * sc.factor(hd), kc.transpose(-1, -2))).view(Bg, Hq, Qm, -1)  # [Bg, Hq, Qm, C]
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1).view(Bg, H, Hq // H * Qm, -1)
    return torch.matmul(p, vc).view(Bg, Hq, Qm, hd)
