"""Attention kernels of the frozen tower vs the math kernel, fp16 / bf16, at the ViT-B/16 and ViT-E/14 block shapes.

Criterion (as flash-attention's own tests): a kernel's error against fp32 math is at most twice the error
of the math kernel run in the same half precision, plus one rounding step of that precision.
"""

from __future__ import annotations

import contextlib
import importlib.util

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from s4v.models import FrozenBackbone, build_clip
from s4v.models.architectures import BACKBONES
from s4v.models.attention import attention

HEADS = {"b16": 12, "e14": 16}  # ViT-B/16: 768 = 12 x 64; ViT-E/14: 1792 = 16 x 112
BATCH = 16  # 2 clips x 8 frames
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
ROUNDING = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
# "sdpa": PyTorch's own dispatch; "sdpa-flash": SDPA pinned to its flash kernel (must support the shape);
# flash-attn and xformers where importable (they are optional extras).
KERNELS = ["sdpa", "sdpa-flash"] + [k for k in ("flash_attn", "xformers") if importlib.util.find_spec(k)]


def _kernel(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    pinned = sdpa_kernel([SDPBackend.FLASH_ATTENTION]) if name == "sdpa-flash" else contextlib.nullcontext()
    with pinned:
        return attention(q, k, v, "sdpa" if name == "sdpa-flash" else name)


def _qkv(tower: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b = BACKBONES[tower]
    heads, tokens = HEADS[tower], 1 + b.num_patches
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (BATCH, heads, tokens, b.width // heads)
    return tuple(torch.randn(shape, device="cuda", generator=g).to(dtype) for _ in range(3))


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES)
@pytest.mark.parametrize("tower", HEADS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_matches_math(kernel: str, tower: str, dtype: torch.dtype) -> None:
    q, k, v = _qkv(tower, dtype)
    reference = attention(q.float(), k.float(), v.float(), "math")
    math_error = (attention(q, k, v, "math").float() - reference).abs().max().item()
    out = _kernel(kernel, q, k, v)
    assert out.shape == q.shape and out.dtype == dtype
    error = (out.float() - reference).abs().max().item()
    bound = 2 * math_error + ROUNDING[dtype] * reference.abs().max().item()
    assert error <= bound, (
        f"{kernel} {tower} {dtype}: max error {error:.2e} > {bound:.2e} (math kernel {math_error:.2e})"
    )


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES)
@pytest.mark.parametrize("kernel", [k for k in KERNELS if k != "sdpa-flash"])
def test_frozen_vit_b16_block_with_backend_matches_math(kernel: str, dtype: torch.dtype) -> None:
    """The routed nn.MultiheadAttention of a real ViT-B/16 block (random init) on each backend."""
    torch.manual_seed(0)
    visual = build_clip("b16", device="cuda").visual
    x = torch.randn(BATCH, 1 + BACKBONES["b16"].num_patches, 768, device="cuda")
    reference = FrozenBackbone(visual, "math").block(0, x)
    math_half = FrozenBackbone(visual, "math", dtype).block(0, x.to(dtype)).float()
    out = FrozenBackbone(visual, kernel).block(0, x.to(dtype))  # the tower is already in `dtype`
    assert out.dtype == dtype
    error = (out.float() - reference).abs().max().item()
    bound = 2 * (math_half - reference).abs().max().item() + ROUNDING[dtype] * reference.abs().max().item()
    assert error <= bound, f"{kernel} {dtype}: block error {error:.2e} > {bound:.2e}"
