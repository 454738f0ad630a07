"""What the trainable view is and how a model is cast for its compute dtype.

DeepSpeed is handed a `TrainableView`: a module that registers only the modules holding trainable
parameters (side network + head) and calls the full model in `forward`. So DeepSpeed casts, broadcasts,
all-reduces, partitions (ZeRO) and checkpoints only the trainable state, while the frozen tower stays
out of its reach: each rank builds it identically (same seed or same weights file) and keeps its own
replica in the compute dtype, without gradients or optimizer state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TrainableView(nn.Module):
    """The model's trainable modules as DeepSpeed's module; `forward` runs the whole model.

    The full model is held outside `_modules`, so DeepSpeed never sees the frozen tower.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "full", model)
        for name, child in model.named_children():
            if any(p.requires_grad for p in child.parameters()):
                self.add_module(name, child)
        held = {id(p) for p in self.parameters()}
        wanted = {id(p) for p in model.trainable_parameters()}
        if held != wanted or any(not p.requires_grad for p in self.parameters()):
            raise ValueError(
                "trainable and frozen parameters share a top-level module; TrainableView needs them "
                "in separate children of the model"
            )

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.full(*inputs)


def _fp32_affine_forward(bn: nn.modules.batchnorm._BatchNorm, base: type, x: torch.Tensor) -> torch.Tensor:
    """`base.forward` with fp32 affine parameters on fp16/bf16 input; running statistics stay fp32."""
    params = bn._parameters
    saved = params["weight"], params["bias"]
    try:
        params["weight"], params["bias"] = (None if p is None else p.float() for p in saved)
        return base.forward(bn, x)
    finally:
        params["weight"], params["bias"] = saved


class Fp32BatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that normalises in fp32 when its parameters are fp16/bf16 (see keep_batchnorm_fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _fp32_affine_forward(self, nn.BatchNorm1d, x)


class Fp32BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that normalises in fp32 when its parameters are fp16/bf16 (see keep_batchnorm_fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _fp32_affine_forward(self, nn.BatchNorm2d, x)


class Fp32BatchNorm3d(nn.BatchNorm3d):
    """BatchNorm3d that normalises in fp32 when its parameters are fp16/bf16 (see keep_batchnorm_fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _fp32_affine_forward(self, nn.BatchNorm3d, x)


# Module-level classes, so a patched module pickles (torch.save of the whole module) and loads back.
_FP32_BATCHNORM: dict[type, type] = {
    nn.BatchNorm1d: Fp32BatchNorm1d,
    nn.BatchNorm2d: Fp32BatchNorm2d,
    nn.BatchNorm3d: Fp32BatchNorm3d,
}


def keep_batchnorm_fp32(module: nn.Module) -> int:
    """Make every BatchNorm of `module` normalise in fp32 once its parameters are cast to fp16/bf16.

    Buffers (the running statistics) stay fp32 while parameters are cast; a BatchNorm then sees
    half-precision affine weights beside fp32 statistics, which PyTorch rejects. The Fp32BatchNorm*
    classes upcast the affine weights (gradients flow back to the half copies) and PyTorch's
    mixed-precision batch norm computes statistics in fp32. Returns how many modules were patched.
    """
    count = 0
    for m in module.modules():
        if type(m) in _FP32_BATCHNORM:
            m.__class__ = _FP32_BATCHNORM[type(m)]
            count += 1
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and type(m) not in _FP32_BATCHNORM.values():
            raise TypeError(f"no fp32 variant of {type(m).__name__}; add one beside Fp32BatchNorm3d")
    return count


def prepare_for_dtype(model: nn.Module, dtype: torch.dtype) -> TrainableView:
    """Put `model` in the compute dtype the way training and evaluation both run it; returns its view.

    The frozen tower is cast to `dtype`; trainable parameters are cast too (buffers stay fp32, as
    DeepSpeed's fp16/bf16 modes leave them, so DeepSpeed's own cast of the view is then a no-op) and
    every BatchNorm normalises in fp32.
    """
    model.backbone.to(dtype)  # each rank's frozen replica lives in the compute dtype
    view = TrainableView(model)
    if dtype != torch.float32:
        for p in view.parameters():
            p.data = p.data.to(dtype)
        keep_batchnorm_fp32(view)
    return view


def compute_dtype(ds: dict[str, Any]) -> torch.dtype:
    if ds.get("fp16", {}).get("enabled", False):
        return torch.float16
    if ds.get("bf16", {}).get("enabled", False):
        return torch.bfloat16
    return torch.float32
