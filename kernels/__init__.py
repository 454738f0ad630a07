"""Triton kernels of the side network, with autograd wrappers and PyTorch references."""

from kernels.temporal_conv import TemporalConvBranch

__all__ = ["TemporalConvBranch"]
