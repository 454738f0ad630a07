"""Compiled Triton temporal branch vs the PyTorch reference on CUDA, fp16 / bf16, at the presets' side shapes.

The fused branch runs as DeepSpeed fp16/bf16 training runs it (parameters in half precision, BatchNorm
statistics in fp32); the reference runs fp32 math on the same rounded parameters and input. Outputs,
input and parameter gradients are compared relative to the largest reference value; the running
statistics (fp32 in both) closely.
"""

from __future__ import annotations

import pytest
import torch

from s4v.kernels import TemporalConvBranch
from s4v.models.architectures import PRESETS

# Side width d and tokens N (the tower's patches) of the pre-norm presets and of ViT-E's light preset.
SHAPES = {
    name: (PRESETS[preset].side_dim, PRESETS[preset].tower.num_patches)
    for name, preset in (("b16", "b16"), ("l14", "l14"), ("e14", "e14-light"))
}
BATCH, FRAMES = 2, 8
TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 3e-2}


def _rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max().clamp_min(1e-12)).item()


def _run(module: TemporalConvBranch, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    out = module(x)
    out.backward(grad)
    return out.detach(), x.grad


@pytest.mark.usefixtures("compiled_triton")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_pre_norm_branch_matches_reference(shape: str, dtype: torch.dtype) -> None:
    dim, tokens = SHAPES[shape]
    torch.manual_seed(0)
    ref = TemporalConvBranch(dim, impl="reference").cuda().train()
    with torch.no_grad():
        ref.bn.weight.uniform_(0.5, 1.5)
        ref.bn.bias.normal_(0.0, 0.5)
        ref.bn.running_mean.normal_(0.0, 1.0)
        ref.bn.running_var.uniform_(0.5, 2.0)
        for p in ref.parameters():
            p.copy_(p.to(dtype))  # the reference sees exactly the half-precision values
    fused = TemporalConvBranch(dim, impl="triton").cuda().train()
    fused.load_state_dict(ref.state_dict())
    for p in fused.parameters():
        p.data = p.data.to(dtype)  # as prepare_for_dtype: parameters cast, buffers stay fp32
    x = (torch.randn(BATCH, FRAMES, tokens, dim, device="cuda") * 2 + 1.5).to(dtype)  # mean far from 0
    grad = torch.randn_like(x)
    assert fused.uses_triton(x)

    out_ref, dx_ref = _run(ref, x.float(), grad.float())
    out, dx = _run(fused, x, grad)
    tol = TOLERANCE[dtype]
    assert out.dtype == dx.dtype == dtype
    assert _rel_error(out, out_ref) <= tol
    assert _rel_error(dx, dx_ref) <= tol
    for (name, p_ref), p in zip(ref.named_parameters(), fused.parameters(), strict=True):
        assert p.grad is not None and p.grad.dtype == dtype, name
        assert _rel_error(p.grad, p_ref.grad) <= tol, name
    for (name, b_ref), b in zip(ref.named_buffers(), fused.buffers(), strict=True):
        if b.dtype == torch.long:
            assert torch.equal(b, b_ref), name
        else:
            assert b.dtype == torch.float32, name
            torch.testing.assert_close(b, b_ref, rtol=1e-3, atol=1e-4, msg=name)


def test_post_norm_branch_runs_pytorch_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """ViT-E's post-norm form cannot fold BN into PW1: on CUDA tensors it still takes the PyTorch path."""
    dim, tokens = SHAPES["e14"]
    torch.manual_seed(0)
    cpu = TemporalConvBranch(dim, impl="auto", form="post").train()
    cuda = TemporalConvBranch(dim, impl="auto", form="post").cuda().train()
    cuda.load_state_dict(cpu.state_dict())
    x = torch.randn(BATCH, FRAMES, tokens, dim)
    assert not cuda.uses_triton(x.cuda())
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # fp32 on both sides of the comparison
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.testing.assert_close(cuda(x.cuda()).cpu(), cpu(x), rtol=1e-4, atol=1e-4)
