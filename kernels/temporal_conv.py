"""Temporal branch of a Side4Video block: BN3d -> PW1 -> depthwise (3,1,1) conv over time -> PW2.

Two forms, as the side-block form of the tower: "pre" (CLIP towers) normalises before the convolutions,
"post" (ViT-E, the reference's eva_clip/eva_vit_model.py) after them: PW1 -> DW -> PW2 -> BN3d.

Works on channel-last tokens (B, T, N, C): 1x1x1 and (3,1,1) convolutions never mix spatial
positions, so the side network never needs to reshape to NCTHW. The module owns standard
nn.BatchNorm3d / nn.Conv3d submodules (same state dict for every implementation) and runs either
the PyTorch reference or the fused Triton path (see `s4v.kernels.fused_temporal_conv` for the design).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import get_args

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from s4v.core.choices import BlockForm, TemporalImpl


def _batchnorm(x: Tensor, bn: nn.BatchNorm3d) -> Tensor:
    b, t, n, c = x.shape
    return bn(x.reshape(b * t * n, c, 1, 1, 1)).view(b, t, n, c)


def _convolutions(y: Tensor, pw1: nn.Conv3d, dw: nn.Conv3d, pw2: nn.Conv3d) -> Tensor:
    y = F.linear(y, pw1.weight.flatten(1), pw1.bias)
    y = dw(y.permute(0, 3, 1, 2).unsqueeze(-1)).squeeze(-1).permute(0, 2, 3, 1)  # depthwise over T
    return F.linear(y, pw2.weight.flatten(1), pw2.bias)


def temporal_conv_reference(
    x: Tensor, bn: nn.BatchNorm3d, pw1: nn.Conv3d, dw: nn.Conv3d, pw2: nn.Conv3d, form: BlockForm = "pre"
) -> Tensor:
    """Plain PyTorch version of the branch on (B, T, N, C) tokens; the kernels are checked against it.

    BN3d runs on the tokens viewed as (B*T*N, C, 1, 1, 1): the same statistics as on NCTHW, with no
    strided layout. On the strided NCTHW view of channel-last tokens (a channels_last_3d tensor), torch
    2.14's CPU BatchNorm backward returns wrong gradients when batch = 1 and the incoming gradient has
    another memory format (tests/test_kernels.py checks the workaround). 1x1x1 convolutions are linear
    layers on channel-last tokens.
    """
    if form == "post":
        return _batchnorm(_convolutions(x, pw1, dw, pw2), bn)
    return _convolutions(_batchnorm(x, bn), pw1, dw, pw2)


def temporal_conv_fused(
    x: Tensor, bn: nn.BatchNorm3d, pw1: nn.Conv3d, dw: nn.Conv3d, pw2: nn.Conv3d, recompute: bool = False
) -> Tensor:
    """The branch through the Triton kernels, with nn.BatchNorm3d's training/eval semantics.

    Imported lazily: Triton decides between compiled and interpreted kernels when the kernel module
    is first imported, so TRITON_INTERPRET may be set any time before the first call.
    """
    from s4v.kernels.fused_temporal_conv import FusedTemporalConv, batch_norm_statistics

    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average, as in torch's _BatchNorm
            momentum = 1.0 / float(bn.num_batches_tracked)
    use_batch_stats = bn.training or bn.running_mean is None
    x = x.contiguous()  # one copy for both the stats and the normalise pass, if any
    device = x.device.type
    compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    # Triton launches on the current CUDA device: make it x's (a no-op on CPU).
    with torch.cuda.device(x.device) if x.is_cuda else nullcontext():
        mean, rstd = batch_norm_statistics(x, bn.running_mean, bn.running_var, use_batch_stats, momentum, bn.eps)
        with torch.autocast(device, enabled=False):
            return FusedTemporalConv.apply(
                x, bn.weight, bn.bias, pw1.weight, pw1.bias, dw.weight, dw.bias, pw2.weight, pw2.bias,
                mean, rstd, use_batch_stats, compute_dtype, recompute,
            )  # fmt: skip


class TemporalConvBranch(nn.Module):
    """BN3d + depthwise-separable temporal convolution (MVFNet style), without the residual.

    impl: "auto" runs the Triton path on CUDA tensors and the reference elsewhere; "triton" forces
    the kernels (on CPU they need TRITON_INTERPRET=1); "reference" forces plain PyTorch.
    recompute (Triton path): keep one activation for backward instead of two, for one more matmul.
    form: "pre" (BN first) or "post" (BN last). The fused kernels fold BN's affine part into PW1, which
    only the "pre" form allows: the "post" form always takes the PyTorch path ("auto" picks it,
    "triton" is refused).
    """

    def __init__(self, dim: int, impl: TemporalImpl = "auto", recompute: bool = False, form: BlockForm = "pre") -> None:
        super().__init__()
        if impl not in get_args(TemporalImpl):
            raise ValueError(f"impl must be one of {get_args(TemporalImpl)}, got {impl!r}")
        if form not in get_args(BlockForm):
            raise ValueError(f"form must be one of {get_args(BlockForm)}, got {form!r}")
        if form == "post" and impl == "triton":
            raise ValueError(
                "the fused Triton branch normalises before the convolutions: the post-norm form runs "
                "in PyTorch (temporal_impl 'auto' or 'reference')"
            )
        self.impl = impl
        self.form = form
        self.recompute = recompute
        self.bn = nn.BatchNorm3d(dim)
        self.pw1 = nn.Conv3d(dim, dim, kernel_size=1)
        self.dw = nn.Conv3d(dim, dim, kernel_size=(3, 1, 1), padding=(1, 0, 0), groups=dim)
        self.pw2 = nn.Conv3d(dim, dim, kernel_size=1)

    def uses_triton(self, x: Tensor) -> bool:
        return self.form == "pre" and (self.impl == "triton" or (self.impl == "auto" and x.is_cuda))

    def forward(self, x: Tensor) -> Tensor:
        if self.uses_triton(x):
            return temporal_conv_fused(x, self.bn, self.pw1, self.dw, self.pw2, self.recompute)
        return temporal_conv_reference(x, self.bn, self.pw1, self.dw, self.pw2, self.form)

    def extra_repr(self) -> str:
        return f"impl={self.impl!r}, recompute={self.recompute}, form={self.form!r}"
