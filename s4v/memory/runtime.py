"""Numerics of a training step on a GPU, reproduced on any device (meta included).

Memory depends on two things the CPU does not do by itself: CUDA autocast's per-op cast policy
(which dtype every saved activation has) and the attention kernel (a fused kernel keeps q, k, v,
out and a log-sum-exp; the explicit "math" attention of 2023-era `nn.MultiheadAttention` also keeps
the (L x L) probabilities). `GpuRuntime` is a TorchFunctionMode that applies both at the level
autograd sees, so the tensors saved for backward are the ones the GPU would save. On CUDA the same
mode runs with `emulate_autocast=False` beside the real `torch.autocast`, so both paths execute
the same attention code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

AttentionKernel = Literal["flash", "math"]

# CUDA autocast op lists (aten/src/ATen/autocast_mode.cpp), matched by Python function name.
LOWER_PRECISION_OPS = frozenset(
    {
        "linear",
        "matmul",
        "__matmul__",
        "__rmatmul__",
        "mm",
        "bmm",
        "baddbmm",
        "addmm",
        "addbmm",
        "addmv",
        "mv",
        "conv1d",
        "conv2d",
        "conv3d",
        "conv_transpose1d",
        "conv_transpose2d",
        "conv_transpose3d",
        "convolution",
        "einsum",
        "prelu",
        "chain_matmul",
        "scaled_dot_product_attention",
    }
)
FP32_OPS = frozenset(
    {
        "layer_norm",
        "group_norm",
        "softmax",
        "log_softmax",
        "cross_entropy",
        "nll_loss",
        "mse_loss",
        "l1_loss",
        "smooth_l1_loss",
        "kl_div",
        "binary_cross_entropy_with_logits",
        "cosine_similarity",
        "exp",
        "expm1",
        "log",
        "log2",
        "log10",
        "log1p",
        "pow",
        "__pow__",
        "__rpow__",
        "rsqrt",
        "reciprocal",
        "sum",
        "prod",
        "cumsum",
        "cumprod",
        "norm",
        "logsumexp",
        "acos",
        "asin",
        "cosh",
        "sinh",
        "tan",
        "erfinv",
        "softplus",
        "renorm",
        "dist",
        "cdist",
        "pdist",
    }
)


def _is_float(t: Any) -> bool:
    return isinstance(t, Tensor) and t.is_floating_point()


def math_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, scale: float | None) -> Tensor:
    """Attention as `nn.MultiheadAttention` computed it before fused kernels: probabilities are materialised."""
    attn = torch.matmul(q * (scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])), k.transpose(-2, -1))
    if attn_mask is not None:
        attn = attn.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else attn + attn_mask
    return torch.matmul(torch.softmax(attn, dim=-1), v)


def fused_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, scale: float | None) -> Tensor:
    """Flash (or memory-efficient, when masked / fp32) attention; explicit aten ops on meta tensors.

    SDPA's kernel choice on meta/fake tensors falls back to math, so off-GPU the fused op that a
    sm80+ GPU would pick is called directly: its autograd node saves q, k, v, out and the log-sum-exp.
    """
    if q.device.type == "cuda":  # GPU-only branch: the real kernels (the mode must not see this call again)
        with torch._C.DisableTorchFunction(), sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    shape = q.shape
    q4, k4, v4 = (t.reshape(-1, *t.shape[-3:]) if t.dim() >= 4 else t.unsqueeze(1) for t in (q, k, v))
    if q.device.type == "cpu":  # real CPU tensors: PyTorch's CPU flash kernel (also keeps out + log-sum-exp)
        mask = (
            None
            if attn_mask is None
            else attn_mask.reshape(-1, *attn_mask.shape[-3:])
            if attn_mask.dim() >= 4
            else attn_mask
        )
        out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q4, k4, v4, attn_mask=mask, scale=scale)[0]
        return out.reshape(*shape[:-1], v.shape[-1])
    flash_ok = attn_mask is None and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] % 8 == 0
    if flash_ok and q.shape[-1] <= 256:
        out = torch.ops.aten._scaled_dot_product_flash_attention(q4, k4, v4, scale=scale)[0]
    else:
        bias = None
        if attn_mask is not None:
            bias = (
                attn_mask
                if attn_mask.dtype != torch.bool
                else torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(~attn_mask, float("-inf"))
            )
            bias = bias.to(q.dtype).expand(q4.shape[0], q4.shape[1], q4.shape[2], k4.shape[2])
        out = torch.ops.aten._scaled_dot_product_efficient_attention(
            q4, k4, v4, bias, q.requires_grad or k.requires_grad or v.requires_grad, scale=scale
        )[0]
    return out.reshape(*shape[:-1], v.shape[-1])


def multi_head_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    embed_dim: int,
    num_heads: int,
    in_proj_weight: Tensor | None,
    in_proj_bias: Tensor | None,
    bias_k: Tensor | None,
    bias_v: Tensor | None,
    add_zero_attn: bool,
    dropout_p: float,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    training: bool = True,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    use_separate_proj_weight: bool = False,
    q_proj_weight: Tensor | None = None,
    k_proj_weight: Tensor | None = None,
    v_proj_weight: Tensor | None = None,
    attention: Callable[..., Tensor] = fused_attention,
    **_: Any,
) -> tuple[Tensor, None]:
    """`F.multi_head_attention_forward` (sequence-first) as a chain of plain ops the mode can see."""
    if bias_k is not None or add_zero_attn or key_padding_mask is not None or (training and dropout_p > 0):
        raise NotImplementedError("memory runtime: bias_k / zero-attn / key padding / attention dropout")
    tgt, batch, _ = query.shape
    if use_separate_proj_weight:
        b_q, b_k, b_v = in_proj_bias.chunk(3) if in_proj_bias is not None else (None, None, None)
        q, k, v = (
            F.linear(query, q_proj_weight, b_q),
            F.linear(key, k_proj_weight, b_k),
            F.linear(value, v_proj_weight, b_v),
        )
    elif query is key and key is value:
        q, k, v = F.linear(query, in_proj_weight, in_proj_bias).chunk(3, dim=-1)
    else:
        w_q, w_kv = in_proj_weight.split([embed_dim, 2 * embed_dim])
        b_q, b_kv = in_proj_bias.split([embed_dim, 2 * embed_dim]) if in_proj_bias is not None else (None, None)
        q, (k, v) = F.linear(query, w_q, b_q), F.linear(key, w_kv, b_kv).chunk(2, dim=-1)

    def heads(t: Tensor) -> Tensor:  # (L, B, E) -> (B, heads, L, E / heads)
        return t.reshape(t.shape[0], batch, num_heads, -1).permute(1, 2, 0, 3)

    if attn_mask is not None and attn_mask.dim() == 3:
        attn_mask = attn_mask.view(batch, num_heads, tgt, -1)
    out = attention(heads(q), heads(k), heads(v), attn_mask, None)
    out = out.permute(2, 0, 1, 3).reshape(tgt * batch, embed_dim)
    return F.linear(out, out_proj_weight, out_proj_bias).view(tgt, batch, embed_dim), None


class GpuRuntime(TorchFunctionMode):
    """Apply CUDA autocast's cast policy (optionally) and pin the attention kernel, at autograd level.

    `emulate_autocast=torch.float16` reproduces `torch.autocast("cuda", torch.float16)` on any
    device: lower-precision ops get fp16 inputs, fp32-list ops fp32 inputs, and casts of trainable
    leaf weights are cached for the region like the real autocast weight cache.
    """

    def __init__(self, attention: AttentionKernel = "flash", emulate_autocast: torch.dtype | None = None) -> None:
        super().__init__()
        if attention not in ("flash", "math"):
            raise ValueError(f"unknown attention kernel {attention!r}")
        self.attention = fused_attention if attention == "flash" else math_attention
        self.cast_dtype = emulate_autocast
        self._cache: dict[int, tuple[Tensor, Tensor]] = {}

    def __exit__(self, *exc: Any) -> None:
        self._cache.clear()
        return super().__exit__(*exc)

    def _cast(self, t: Any, dtype: torch.dtype) -> Any:
        if not _is_float(t) or t.dtype == dtype:
            return t
        if t.is_leaf and t.requires_grad:
            hit = self._cache.get(id(t))
            if hit is None or hit[0] is not t:
                hit = (t, t.to(dtype))
                self._cache[id(t)] = hit
            return hit[1]
        return t.to(dtype)

    def _cast_all(self, args: tuple, kwargs: dict, dtype: torch.dtype) -> tuple[tuple, dict]:
        def cast(x: Any) -> Any:
            return self._cast(x, dtype)

        return tree_map(cast, args), tree_map(cast, kwargs)

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "multi_head_attention_forward":
            with self:  # re-enter: the handler runs with this mode popped, and its inner ops must be seen
                return multi_head_attention(*args, attention=self.attention, **kwargs)
        if self.cast_dtype is not None:
            if name in LOWER_PRECISION_OPS:
                args, kwargs = self._cast_all(args, kwargs, self.cast_dtype)
            elif name in FP32_OPS:
                args, kwargs = self._cast_all(args, kwargs, torch.float32)
        if name == "scaled_dot_product_attention":
            q, k, v, *rest = args
            mask = kwargs.get("attn_mask", rest[0] if rest else None)
            if kwargs.get("is_causal") or kwargs.get("dropout_p", 0.0):
                raise NotImplementedError("memory runtime: causal or dropout attention")
            with self:
                return self.attention(q, k, v, mask, kwargs.get("scale"))
        return func(*args, **kwargs)
