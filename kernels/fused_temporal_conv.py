"""Autograd function of the fused temporal branch: BN3d -> PW1 -> DW(3,1,1) over time -> PW2.

Fusion boundary (why it is drawn here):
- BN and DW are separated by PW1, a dense C x C matmul, so they cannot share one pass over memory.
  PW1 and PW2 stay cuBLAS matmuls (torch.addmm, tensor cores, autocast dtype). A Triton GEMM with
  the BN normalise as its prologue would save one more pass (writing and reading xhat) at the cost
  of replacing cuBLAS; not done while the kernels cannot be timed on a GPU.
- BN's affine part (gamma, beta) is folded into PW1: h1 = xhat @ (W1 * gamma)^T + (b1 + W1 @ beta).
  Only xhat = (x - mean) * rstd is materialised (Triton: one stats pass, one normalise pass). The
  mean is subtracted *before* the matmul, not folded into its bias, because a folded mean cancels
  catastrophically in bf16/fp16 when |mean| >> std.
- The whole BN backward rides on PW1's weight gradient: M = dh1^T @ xhat is needed for dW1 anyway
  and gives dW1 = M * gamma + db1 (x) beta, dgamma = sum_j W1 * M, dbeta = db1 @ W1 at C x C cost.
  The input grad is dx = dh1 @ (W1 * gamma * rstd) + a * xhat + b: one matmul plus a one-pass Triton
  epilogue; eager BN backward needs its own reduction pass over (dy, x) and an elementwise pass.
- DW forward is one Triton pass (three temporal taps from the channel-last rows r -/+ N). DW backward
  is one Triton pass that writes the input grad and reduces the three tap grads, the DW bias grad and
  PW1's bias grad (column sums of its own output) on the fly.
- Saved for backward: xhat and h1 only (eager saves x, BN's output, h1 and h2). BN backward needs xhat,
  never x; h2 = DW(h1) is recomputed in backward by one memory-bound pass instead of being kept.
  With recompute=True only xhat is kept and h1 is recomputed too (one extra C x C matmul).
All kernels read fp16/bf16 and accumulate in fp32; the matmuls run in the autocast dtype if autocast
is on, else in the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from s4v.kernels import triton_ops as ops


def _pw1(xhat: Tensor, bn_weight: Tensor, bn_bias: Tensor, pw1_weight: Tensor, pw1_bias: Tensor) -> Tensor:
    """PW1 with BN's affine folded in: xhat @ (W1 * gamma)^T + (b1 + W1 @ beta), in xhat's dtype."""
    c = xhat.shape[1]
    w1 = pw1_weight.reshape(c, c).float()
    bias = (pw1_bias.float() + w1 @ bn_bias.float()).to(xhat.dtype)
    return torch.addmm(bias, xhat, (w1 * bn_weight.float()).to(xhat.dtype).t())


class FusedTemporalConv(torch.autograd.Function):
    """Inputs: x (B, T, N, C), bn/pw1/dw/pw2 weight and bias, BN (mean, rstd) in fp32, whether they are
    batch statistics (training backward), the matmul dtype, and whether to recompute h1 in backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,
        bn_weight: Tensor,
        bn_bias: Tensor,
        pw1_weight: Tensor,
        pw1_bias: Tensor,
        dw_weight: Tensor,
        dw_bias: Tensor,
        pw2_weight: Tensor,
        pw2_bias: Tensor,
        mean: Tensor,
        rstd: Tensor,
        batch_stats: bool,
        compute_dtype: torch.dtype,
        recompute: bool,
    ) -> Tensor:
        b, t, n, c = x.shape
        x2 = x.reshape(-1, c).contiguous()
        xhat = ops.bn_normalise(x2, mean, rstd, compute_dtype)
        h1 = _pw1(xhat, bn_weight, bn_bias, pw1_weight, pw1_bias)
        w_dw, b_dw = dw_weight.reshape(c, 3).float().contiguous(), dw_bias.float()
        h2 = ops.dw_forward(h1, w_dw, b_dw, t, n)
        w2 = pw2_weight.reshape(c, c).to(compute_dtype)
        out = torch.addmm(pw2_bias.to(compute_dtype), h2, w2.t())
        ctx.save_for_backward(
            xhat, None if recompute else h1, rstd, bn_weight, bn_bias, pw1_weight, pw1_bias, dw_weight, dw_bias,
            pw2_weight,
        )  # fmt: skip
        ctx.batch_stats = batch_stats
        ctx.x_dtype = x.dtype
        ctx.pw_dtypes = (pw1_bias.dtype, pw2_bias.dtype)
        return out.view(b, t, n, c)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        xhat, h1, rstd, bn_weight, bn_bias, pw1_weight, pw1_bias, dw_weight, dw_bias, pw2_weight = ctx.saved_tensors
        b, t, n, c = grad_out.shape
        rows = b * t * n
        cdt = xhat.dtype
        with torch.autocast(grad_out.device.type, enabled=False):
            if h1 is None:  # recompute mode: one more matmul instead of a saved activation
                h1 = _pw1(xhat, bn_weight, bn_bias, pw1_weight, pw1_bias)
            g = grad_out.reshape(rows, c).to(cdt).contiguous()
            w_dw = dw_weight.reshape(c, 3).float().contiguous()
            h2 = ops.dw_forward(h1, w_dw, dw_bias.float(), t, n)  # recomputed, never saved
            d_w2 = (g.t() @ h2).float()
            del h2
            d_b2 = g.sum(0, dtype=torch.float32)
            d_h2 = g @ pw2_weight.reshape(c, c).to(cdt)
            d_h1, d_wdw, d_bdw, d_b1 = ops.dw_backward(d_h2, h1, w_dw, t, n)
            del d_h2
            gamma, beta = bn_weight.float(), bn_bias.float()
            w1 = pw1_weight.reshape(c, c).float()
            m = (d_h1.t() @ xhat).float()  # dh1^T xhat: PW1 weight grad before the BN affine
            d_w1 = m * gamma + d_b1[:, None] * beta
            d_gamma = (w1 * m).sum(0)
            d_beta = d_b1 @ w1
            dx = None
            if ctx.needs_input_grad[0]:  # the first side block's input may not need it
                scale = gamma * rstd
                mm = d_h1 @ (w1 * scale).to(cdt)
                if ctx.batch_stats:
                    a = -scale * d_gamma / rows
                    shift = -scale * d_beta / rows
                    dx = ops.bn_input_grad(mm, xhat, a.contiguous(), shift.contiguous(), ctx.x_dtype)
                else:
                    dx = mm.to(ctx.x_dtype)
                dx = dx.view(b, t, n, c)
        b1_dtype, b2_dtype = ctx.pw_dtypes
        return (
            dx,
            d_gamma.to(bn_weight.dtype),
            d_beta.to(bn_bias.dtype),
            d_w1.to(pw1_weight.dtype).view_as(pw1_weight),
            d_b1.to(b1_dtype),
            d_wdw.to(dw_weight.dtype).reshape(dw_weight.shape),
            d_bdw.to(dw_bias.dtype),
            d_w2.to(pw2_weight.dtype).view_as(pw2_weight),
            d_b2.to(b2_dtype),
            None,
            None,
            None,
            None,
            None,
        )


def batch_norm_statistics(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    use_batch_stats: bool,
    momentum: float,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """(mean, rstd) in fp32 as nn.BatchNorm3d would normalise with; updates running stats in training.

    Running stats follow torch: running = (1 - momentum) * running + momentum * batch, with the
    unbiased batch variance.
    """
    c = x.shape[-1]
    if not use_batch_stats:
        return running_mean.float(), torch.rsqrt(running_var.float() + eps)
    x2 = x.detach().reshape(-1, c).contiguous()
    rows = x2.shape[0]
    if rows < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
    mean, var = ops.bn_stats(x2)
    if running_mean is not None:
        with torch.no_grad():
            running_mean.copy_(torch.lerp(running_mean.float(), mean, momentum))
            running_var.copy_(torch.lerp(running_var.float(), var * (rows / (rows - 1)), momentum))
    return mean, torch.rsqrt(var + eps)
