"""Triton kernels of the side network, with autograd wrappers and PyTorch references."""

from s4v.kernels.temporal_conv import TemporalConvBranch

__all__ = ["TemporalConvBranch"]
