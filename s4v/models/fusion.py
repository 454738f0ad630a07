"""LayerNorm + Down projection of frozen features, saving only the frozen input for backward.

Eager `Linear(LayerNorm(Z))` keeps two D-wide tensors per fused layer alive until backward (the
LayerNorm input and the Down input). Here backward recomputes the normalised features from Z and
the saved per-token mean / rstd, so one D-wide tensor per layer (Z itself, in the tower's dtype)
is all the frozen side costs: the dominant activation memory at ViT-E.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _NormDownFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, ln_w: Tensor, ln_b: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
        if z.requires_grad:
            raise RuntimeError("NormDown is for frozen features: its input must not require grad")
        zf = z.to(w.dtype)
        var, mean = torch.var_mean(zf, dim=-1, keepdim=True, correction=0)
        rstd = torch.rsqrt(var + eps)
        h = (zf - mean) * rstd * ln_w + ln_b
        ctx.save_for_backward(z, mean, rstd, ln_w, ln_b, w)
        return F.linear(h, w, b)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        z, mean, rstd, ln_w, ln_b, w = ctx.saved_tensors
        z_hat = (z.to(w.dtype) - mean) * rstd
        h = z_hat * ln_w + ln_b
        g2 = grad.reshape(-1, grad.shape[-1])
        grad_w = g2.t() @ h.reshape(-1, h.shape[-1])
        grad_b = g2.sum(0)
        grad_h = (grad @ w).reshape(-1, w.shape[1])
        grad_ln_w = (grad_h * z_hat.reshape(-1, w.shape[1])).sum(0)
        grad_ln_b = grad_h.sum(0)
        return None, grad_ln_w, grad_ln_b, grad_w, grad_b, None


class NormDown(nn.Module):
    """`Down(LayerNorm(Z))` (D -> d) with state-dict keys `norm.*`, `down.*` like the eager pair."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.down = nn.Linear(in_dim, out_dim)

    def forward(self, z: Tensor) -> Tensor:
        n, d = self.norm, self.down
        return _NormDownFunction.apply(z, n.weight, n.bias, d.weight, d.bias, n.eps)
