"""Attention kernel selection for the frozen tower.

open_clip's CLIP blocks call `nn.MultiheadAttention`, whose inference fast path bypasses any
kernel choice. We re-route those modules through one function that dispatches to SDPA (default:
PyTorch picks its flash kernel on sm80+ in fp16/bf16), SDPA's math kernel (the reference),
flash-attn or xformers (GPU only, when importable). Parameters and state-dict keys are untouched.
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from s4v.core.choices import AttnBackend

ATTN_BACKENDS: tuple[AttnBackend, ...] = get_args(AttnBackend)
_GPU_ONLY = {"flash_attn": "flash_attn", "xformers": "xformers"}


def check_backend(backend: str, device: torch.device) -> None:
    """Fail early with a clear message instead of deep inside the first forward."""
    if backend not in ATTN_BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {ATTN_BACKENDS}")
    if backend in _GPU_ONLY:
        if device.type != "cuda":
            raise ValueError(f"attention backend {backend!r} needs CUDA (device is {device}); use 'sdpa'")
        if importlib.util.find_spec(_GPU_ONLY[backend]) is None:
            raise ImportError(f"attention backend {backend!r} needs `pip install s4v[{backend.split('_')[0]}]`")


def sdpa_context(backend: str) -> contextlib.AbstractContextManager:
    """Context that pins SDPA to its math kernel for the 'math' backend (used by timm's EVA blocks too)."""
    return sdpa_kernel([SDPBackend.MATH]) if backend == "math" else contextlib.nullcontext()


def attention(q: Tensor, k: Tensor, v: Tensor, backend: str) -> Tensor:
    """Multi-head attention on (B, heads, L, head_dim) tensors with the chosen kernel."""
    if backend in ("sdpa", "math"):
        with sdpa_context(backend):
            return F.scaled_dot_product_attention(q, k, v)
    if backend == "flash_attn":  # GPU-only branch
        from flash_attn import flash_attn_func

        return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    if backend == "xformers":  # GPU-only branch
        from xformers.ops import memory_efficient_attention

        return memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    raise ValueError(f"unknown attention backend {backend!r}")


class DispatchingMultiheadAttention(nn.MultiheadAttention):
    """`nn.MultiheadAttention` (self-attention, batch_first, no mask) routed through `attention()`."""

    attn_backend: str = "sdpa"

    def forward(self, query: Tensor, key: Tensor, value: Tensor, **kwargs) -> tuple[Tensor, None]:
        if kwargs.get("attn_mask") is not None or not self.batch_first or self.in_proj_weight is None:
            raise NotImplementedError("frozen ViT attention: unmasked batch-first self-attention only")
        b, n, width = query.shape
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, self.attn_backend).transpose(1, 2).reshape(b, n, width)
        return self.out_proj(out), None


def route_attention(module: nn.Module, backend: str) -> int:
    """Swap every `nn.MultiheadAttention` under `module` to the dispatching subclass; returns how many."""
    count = 0
    for sub in module.modules():
        if type(sub) in (nn.MultiheadAttention, DispatchingMultiheadAttention):
            sub.__class__ = DispatchingMultiheadAttention
            sub.attn_backend = backend
            count += 1
    return count
