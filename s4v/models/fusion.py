"""LayerNorm + Down projection of frozen features (both orders), saving only the frozen input for backward.

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

    def eager(self, z: Tensor) -> Tensor:
        """The same function as plain modules (the reference code's memory: Z and LayerNorm(Z) kept)."""
        return self.down(self.norm(z))


class _DownNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, w: Tensor, b: Tensor, ln_w: Tensor, ln_b: Tensor, eps: float) -> Tensor:
        if z.requires_grad:
            raise RuntimeError("DownNorm is for frozen features: its input must not require grad")
        y = F.linear(z.to(w.dtype), w, b)
        var, mean = torch.var_mean(y, dim=-1, keepdim=True, correction=0)
        rstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(z, mean, rstd, w, b, ln_w)
        return (y - mean) * rstd * ln_w + ln_b

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        z, mean, rstd, w, b, ln_w = ctx.saved_tensors
        zf = z.to(w.dtype)
        y_hat = (F.linear(zf, w, b) - mean) * rstd  # recomputed: the d-wide Down output is not kept
        g = grad.reshape(-1, grad.shape[-1])
        y_hat2 = y_hat.reshape(-1, y_hat.shape[-1])
        grad_ln_w = (g * y_hat2).sum(0)
        grad_ln_b = g.sum(0)
        g_hat = g * ln_w
        # LayerNorm backward: rstd * (g_hat - mean(g_hat) - y_hat * mean(g_hat * y_hat)) over the side width.
        grad_y = rstd.reshape(-1, 1) * (
            g_hat - g_hat.mean(-1, keepdim=True) - y_hat2 * (g_hat * y_hat2).mean(-1, keepdim=True)
        )
        grad_w = grad_y.t() @ zf.reshape(-1, zf.shape[-1])
        return None, grad_w, grad_y.sum(0), grad_ln_w, grad_ln_b, None


class DownNorm(nn.Module):
    """`LayerNorm_d(Down(Z))` (D -> d, then normalise over d): the ViT-E fusion of the reference's
    eva_clip/eva_vit_model.py. Eager keeps Z and the d-wide Down output for backward; here only Z
    (and per-token mean / rstd) is kept and the Down output is recomputed in backward."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.down = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, z: Tensor) -> Tensor:
        d, n = self.down, self.norm
        return _DownNormFunction.apply(z, d.weight, d.bias, n.weight, n.bias, n.eps)

    def eager(self, z: Tensor) -> Tensor:
        """The same function as plain modules (the reference code's memory: Z and Down(Z) kept)."""
        return self.norm(self.down(z))
