"""Fused Triton temporal branch vs the PyTorch reference, run on CPU through TRITON_INTERPRET=1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from s4v.kernels import TemporalConvBranch
from s4v.memory.tracker import saved_activation_bytes


def _pair(dim: int, training: bool, seed: int = 0) -> tuple[TemporalConvBranch, TemporalConvBranch]:
    """Reference and Triton branches with identical, non-trivial parameters and running stats."""
    torch.manual_seed(seed)
    ref = TemporalConvBranch(dim, impl="reference")
    with torch.no_grad():
        ref.bn.weight.uniform_(0.5, 1.5)
        ref.bn.bias.normal_(0.0, 0.5)
        ref.bn.running_mean.normal_(0.0, 1.0)
        ref.bn.running_var.uniform_(0.5, 2.0)
    fused = TemporalConvBranch(dim, impl="triton")
    fused.load_state_dict(ref.state_dict())
    return ref.train(training), fused.train(training)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 2e-5) -> None:
    """Max abs error within tol relative to the magnitude of the expected tensor (fp32 accumulation order)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= tol * (1.0 + expected.double().abs().max().item()), err


def _run(module: TemporalConvBranch, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    out = module(x)
    out.backward(grad)
    return out.detach(), x.grad


CASES = [  # (batch, frames, tokens, channels, training)
    (1, 1, 6, 192, True),
    (2, 2, 3, 320, True),
    (1, 8, 3, 576, True),
    (2, 16, 2, 192, True),
    (1, 2, 5, 320, False),
    (2, 8, 2, 576, False),
    (1, 16, 2, 320, False),
    (2, 1, 3, 576, False),
]


@pytest.mark.parametrize("batch,frames,tokens,dim,training", CASES)
def test_matches_reference(batch: int, frames: int, tokens: int, dim: int, training: bool) -> None:
    ref, fused = _pair(dim, training)
    x = torch.randn(batch, frames, tokens, dim) * 2.0 + 1.5  # mean far from 0: the centring matters
    grad = torch.randn(batch, frames, tokens, dim)
    out_ref, dx_ref = _run(ref, x, grad)
    out, dx = _run(fused, x, grad)
    _assert_close(out, out_ref)
    _assert_close(dx, dx_ref)
    for (name, p_ref), p in zip(ref.named_parameters(), fused.parameters(), strict=True):
        assert p.grad is not None, name
        _assert_close(p.grad, p_ref.grad)
    for (name, b_ref), b in zip(ref.named_buffers(), fused.buffers(), strict=True):
        assert torch.equal(b, b_ref) if b.dtype == torch.long else torch.allclose(b, b_ref, atol=1e-6), name


def test_running_stats_over_steps_and_cumulative_momentum() -> None:
    """Three training steps then eval: running stats (EMA and momentum=None) drive the eval output."""
    for momentum in (0.3, None):
        ref, fused = _pair(192, training=True, seed=1)
        ref.bn.momentum = fused.bn.momentum = momentum
        for step in range(3):
            x = torch.randn(2, 2, 3, 192) * (step + 1) + step
            _assert_close(fused(x), ref(x))
        assert int(fused.bn.num_batches_tracked) == int(ref.bn.num_batches_tracked) == 3
        torch.testing.assert_close(fused.bn.running_mean, ref.bn.running_mean, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(fused.bn.running_var, ref.bn.running_var, atol=1e-6, rtol=1e-5)
        ref.eval(), fused.eval()
        x = torch.randn(1, 2, 3, 192)
        _assert_close(fused(x), ref(x))


def test_input_without_grad() -> None:
    """Parameter grads only (dx skipped) when the input does not require grad."""
    ref, fused = _pair(192, training=True)
    x = torch.randn(1, 4, 3, 192)
    ref(x).square().sum().backward()
    out = fused(x)
    out.square().sum().backward()
    for p_ref, p in zip(ref.parameters(), fused.parameters(), strict=True):
        _assert_close(p.grad, p_ref.grad)


def test_non_contiguous_input() -> None:
    ref, fused = _pair(320, training=True)
    x = torch.randn(2, 3, 2, 320).transpose(1, 2)  # (B, T, N, C) view with permuted strides
    grad = torch.randn(2, 2, 3, 320)
    out_ref, dx_ref = _run(ref, x, grad)
    out, dx = _run(fused, x, grad)
    _assert_close(out, out_ref)
    _assert_close(dx, dx_ref)


def test_batch_stats_are_exact_far_from_zero() -> None:
    """Partial (mean, M2) merging keeps the variance exact where sum-of-squares would cancel."""
    from s4v.kernels import triton_ops

    x = torch.randn(300, 192).mul(0.01).add(1000.0)
    mean, var = triton_ops.bn_stats(x)
    x64 = x.double()
    torch.testing.assert_close(mean.double(), x64.mean(0), atol=1e-4, rtol=0)  # fp32 ulp at 1000: 6e-5
    torch.testing.assert_close(var.double(), x64.var(0, unbiased=False), atol=0, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_fp32(dtype: torch.dtype) -> None:
    """Kernels load fp16/bf16, compute in fp32 and round once on store."""
    from s4v.kernels import triton_ops

    torch.manual_seed(0)
    x = (torch.randn(2 * 4 * 3, 320) * 3 + 2).to(dtype)
    mean, var = triton_ops.bn_stats(x)
    assert mean.dtype == var.dtype == torch.float32
    torch.testing.assert_close(mean, x.float().mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(var, x.float().var(0, unbiased=False), atol=1e-5, rtol=1e-5)

    w, b = torch.randn(320, 3), torch.randn(320)
    out = triton_ops.dw_forward(x, w, b, 4, 3)
    assert out.dtype == dtype
    h = x.float().view(2, 4, 3, 320)
    padded = torch.nn.functional.pad(h, (0, 0, 0, 0, 1, 1))
    expected = padded[:, :-2] * w[:, 0] + padded[:, 1:-1] * w[:, 1] + padded[:, 2:] * w[:, 2] + b
    # Triton's CPU interpreter truncates fp32 -> bf16 on store (GPUs round to nearest): allow one bf16 ulp.
    ulp = 2.0**-7 if dtype == torch.bfloat16 else 0.0
    torch.testing.assert_close(out.float(), expected.reshape(-1, 320).to(dtype).float(), atol=0, rtol=ulp)


def test_bf16_module_matches_fp32_math() -> None:
    """A bf16 module (DeepSpeed bf16) on bf16 tokens: grads come back in bf16, close to fp32 math."""
    ref, fused = _pair(192, training=True)
    fused.to(torch.bfloat16)
    ref.load_state_dict({k: v.to(torch.bfloat16).to(v.dtype) for k, v in ref.state_dict().items()})
    x = (torch.randn(2, 4, 3, 192) * 2 + 1).to(torch.bfloat16)
    grad = torch.randn(2, 4, 3, 192).to(torch.bfloat16)
    out_ref, dx_ref = _run(ref, x.float(), grad.float())
    out, dx = _run(fused, x, grad)
    assert out.dtype == dx.dtype == torch.bfloat16
    _assert_close(out.float(), out_ref, tol=3e-2)
    _assert_close(dx.float(), dx_ref, tol=3e-2)
    for p_ref, p in zip(ref.parameters(), fused.parameters(), strict=True):
        assert p.grad.dtype == torch.bfloat16
        _assert_close(p.grad.float(), p_ref.grad, tol=3e-2)


def test_autocast_runs_matmuls_in_autocast_dtype() -> None:
    ref, fused = _pair(320, training=True)
    x = torch.randn(1, 4, 3, 320) + 1
    grad = torch.randn(1, 4, 3, 320)
    out_ref, dx_ref = _run(ref, x, grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, dx = _run(fused, x, grad)
    assert out.dtype == torch.bfloat16 and dx.dtype == torch.float32
    _assert_close(out.float(), out_ref, tol=3e-2)
    _assert_close(dx, dx_ref, tol=3e-2)
    for p_ref, p in zip(ref.parameters(), fused.parameters(), strict=True):
        assert p.grad.dtype == torch.float32
        _assert_close(p.grad, p_ref.grad, tol=3e-2)


def test_fused_saves_two_activations_eager_four() -> None:
    """Fused keeps xhat and h1 (plus C floats of rstd); eager keeps x, BN output, h1 and h2."""
    batch, frames, tokens, dim = 2, 4, 3, 192
    activation = batch * frames * tokens * dim * 4
    ref, fused = _pair(dim, training=True)
    x = torch.randn(batch, frames, tokens, dim, requires_grad=True)
    eager = saved_activation_bytes(lambda: ref(x), ref.parameters())
    ours = saved_activation_bytes(lambda: fused(x), fused.parameters())
    assert ours == 2 * activation + dim * 4
    assert eager >= 4 * activation
    assert ours < eager


def test_recompute_saves_one_activation_same_grads() -> None:
    batch, frames, tokens, dim = 1, 8, 3, 320
    _, fused = _pair(dim, training=True)
    _, lean = _pair(dim, training=True)
    lean.recompute = True
    x = torch.randn(batch, frames, tokens, dim) + 1
    grad = torch.randn_like(x)
    assert saved_activation_bytes(lambda: lean(x.requires_grad_()), lean.parameters()) == x.numel() * 4 + dim * 4
    out_a, dx_a = _run(fused, x, grad)
    out_b, dx_b = _run(lean, x, grad)
    assert torch.equal(out_a, out_b)
    _assert_close(dx_b, dx_a, tol=1e-6)
    for p_a, p_b in zip(fused.parameters(), lean.parameters(), strict=True):
        _assert_close(p_b.grad, p_a.grad, tol=1e-6)


def test_reference_matches_ncthw_modules_at_batch_one() -> None:
    """The reference avoids torch's CPU BatchNorm3d backward bug on mixed-layout batch-1 inputs."""
    torch.manual_seed(0)
    branch = TemporalConvBranch(64, impl="reference")
    x = torch.randn(1, 4, 5, 64)
    grad = torch.randn(1, 4, 5, 64)
    out_ref, dx_ref = _run(branch, x, grad)
    grads_ref = [p.grad.clone() for p in branch.parameters()]
    branch.zero_grad()
    x5 = x.permute(0, 3, 1, 2).reshape(1, 64, 4, 5, 1).contiguous().requires_grad_()
    out5 = branch.pw2(branch.dw(branch.pw1(branch.bn(x5))))
    out5.backward(grad.permute(0, 3, 1, 2).reshape(1, 64, 4, 5, 1).contiguous())
    _assert_close(out_ref, out5.reshape(1, 64, 4, 5).permute(0, 2, 3, 1))
    _assert_close(dx_ref, x5.grad.reshape(1, 64, 4, 5).permute(0, 2, 3, 1))
    for g_ref, p in zip(grads_ref, branch.parameters(), strict=True):
        _assert_close(g_ref, p.grad)


def test_impl_switch_and_errors() -> None:
    x = torch.randn(1, 2, 3, 192)
    assert not TemporalConvBranch(192).uses_triton(x)  # auto: Triton only for CUDA tensors
    assert TemporalConvBranch(192, impl="triton").uses_triton(x)
    assert not TemporalConvBranch(192, impl="reference").uses_triton(x)
    with pytest.raises(ValueError, match="impl"):
        TemporalConvBranch(192, impl="cuda")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="more than 1 value"):
        TemporalConvBranch(192, impl="triton")(torch.randn(1, 1, 1, 192))


def test_kernels_compile_for_cuda_without_gpu() -> None:
    """The real Triton compiler (stricter than the interpreter) builds every kernel to an sm_90 cubin."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "s4v.kernels.aot_check", "--archs", "90", "--dtypes", "fp32,bf16"]
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("_dw_backward_kernel") == 2, proc.stdout


def test_post_norm_branch_normalises_after_the_convolutions_and_never_takes_triton() -> None:
    torch.manual_seed(0)
    post = TemporalConvBranch(32, impl="auto", form="post").train()
    pre = TemporalConvBranch(32, impl="reference").train()
    pre.load_state_dict(post.state_dict())  # one state dict for both forms
    x = torch.randn(2, 4, 3, 32)
    y = x.reshape(-1, 32) @ post.pw1.weight.flatten(1).t() + post.pw1.bias
    y = post.dw(y.view(2, 4, 3, 32).permute(0, 3, 1, 2).unsqueeze(-1)).squeeze(-1).permute(0, 2, 3, 1)
    y = y @ post.pw2.weight.flatten(1).t() + post.pw2.bias
    expected = (y - y.mean((0, 1, 2))) / torch.sqrt(y.var((0, 1, 2), unbiased=False) + 1e-5)
    torch.testing.assert_close(post(x), expected, rtol=1e-4, atol=1e-4)
    assert not post.uses_triton(x.cuda() if torch.cuda.is_available() else x)
    assert not torch.allclose(pre(x), post(x))
    with pytest.raises(ValueError, match="post-norm form runs in PyTorch"):
        TemporalConvBranch(32, impl="triton", form="post")
