"""Triton kernels of the fused temporal branch and the launchers that pick their tile sizes.

All kernels work on a contiguous channel-last matrix of R = B*T*N rows and C channels; row r is
token (b, t, n) with r = (b*T + t)*N + n, so its temporal neighbours are the rows r -/+ N.
Every load is cast to fp32 and every reduction accumulates in fp32, whatever the storage dtype.
Row indices are int32 (R < 2**31; 64-bit division is slow on GPUs), element offsets int64.
Reductions over rows are written as per-program partials and summed by torch afterwards:
deterministic, unlike atomics.

Import this module only after TRITON_INTERPRET is final: `triton.jit` reads it at decoration time.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _bn_stats_kernel(x_ptr, mean_ptr, m2_ptr, R, C, rows_per_prog, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per-program channel mean and M2 over `rows_per_prog` rows, merged tile by tile (Chan et al.).

    Values are shifted by the program's first row before summing, so fp32 sums stay small and exact
    even when |mean| >> std (e.g. 1000 +- 0.01).
    """
    pid_r = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    shift = tl.load(x_ptr + (pid_r * rows_per_prog).to(tl.int64) * C + cols, mask=cmask, other=0.0).to(tl.float32)
    mean = tl.zeros([BLOCK_C], tl.float32)
    m2 = tl.zeros([BLOCK_C], tl.float32)
    count = tl.zeros([BLOCK_C], tl.float32)
    for start in range(0, rows_per_prog, BLOCK_R):
        local = start + tl.arange(0, BLOCK_R)
        rows = pid_r * rows_per_prog + local
        rmask = (rows < R) & (local < rows_per_prog)
        mask = rmask[:, None] & cmask[None, :]
        x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * C + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        x = tl.where(mask, x - shift[None, :], 0.0)
        n_tile = tl.sum(rmask.to(tl.float32), axis=0)
        tile_mean = tl.sum(x, axis=0) / tl.maximum(n_tile, 1.0)
        centred = tl.where(mask, x - tile_mean[None, :], 0.0)
        total = count + n_tile
        delta = tile_mean - mean
        frac = n_tile / tl.maximum(total, 1.0)
        mean += delta * frac
        m2 += tl.sum(centred * centred, axis=0) + delta * delta * count * frac
        count = total
    tl.store(mean_ptr + pid_r * C + cols, mean + shift, mask=cmask)
    tl.store(m2_ptr + pid_r * C + cols, m2, mask=cmask)


@triton.jit
def _bn_normalise_kernel(x_ptr, y_ptr, mean_ptr, rstd_ptr, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """y = (x - mean) * rstd, stored in y's dtype (the affine part is folded into PW1's weights)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    mask = (rows < R)[:, None] & cmask[None, :]
    offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.load(mean_ptr + cols, mask=cmask, other=0.0)
    rstd = tl.load(rstd_ptr + cols, mask=cmask, other=0.0)
    y = (x - mean[None, :]) * rstd[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bn_input_grad_kernel(mm_ptr, xhat_ptr, a_ptr, b_ptr, dx_ptr, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """BN training backward epilogue: dx = mm + a * xhat + b (mm = dh1 @ PW1 weight scaled by gamma*rstd)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    mask = (rows < R)[:, None] & cmask[None, :]
    offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
    mm = tl.load(mm_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    xhat = tl.load(xhat_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + cols, mask=cmask, other=0.0)
    b = tl.load(b_ptr + cols, mask=cmask, other=0.0)
    dx = mm + a[None, :] * xhat + b[None, :]
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dw_forward_kernel(h_ptr, w_ptr, bias_ptr, out_ptr, R, C, T, N, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[t] = w0 * h[t-1] + w1 * h[t] + w2 * h[t+1] + bias (zero padding at both ends of each clip)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    rmask = rows < R
    t = (rows // N) % T
    mask = rmask[:, None] & cmask[None, :]
    offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
    step = N * C
    h_prev = tl.load(h_ptr + offs - step, mask=mask & (t > 0)[:, None], other=0.0).to(tl.float32)
    h_cur = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    h_next = tl.load(h_ptr + offs + step, mask=mask & (t < T - 1)[:, None], other=0.0).to(tl.float32)
    w0 = tl.load(w_ptr + cols * 3, mask=cmask, other=0.0)
    w1 = tl.load(w_ptr + cols * 3 + 1, mask=cmask, other=0.0)
    w2 = tl.load(w_ptr + cols * 3 + 2, mask=cmask, other=0.0)
    bias = tl.load(bias_ptr + cols, mask=cmask, other=0.0)
    out = w0[None, :] * h_prev + w1[None, :] * h_cur + w2[None, :] * h_next + bias[None, :]
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dw_backward_kernel(
    g_ptr,
    h_ptr,
    w_ptr,
    gin_ptr,
    part_ptr,
    R,
    C,
    T,
    N,
    rows_per_prog,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One pass over (dout, h): input grad plus per-program partial sums of the five channel reductions.

    Partials (5, programs, C): dw0, dw1, dw2, dbias (= sum dout) and sum of the input grad, which is the
    bias grad of PW1 and is needed by the folded BN backward; computing it here saves a pass.
    """
    pid_r = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    w0 = tl.load(w_ptr + cols * 3, mask=cmask, other=0.0)[None, :]
    w1 = tl.load(w_ptr + cols * 3 + 1, mask=cmask, other=0.0)[None, :]
    w2 = tl.load(w_ptr + cols * 3 + 2, mask=cmask, other=0.0)[None, :]
    acc_w0 = tl.zeros([BLOCK_C], tl.float32)
    acc_w1 = tl.zeros([BLOCK_C], tl.float32)
    acc_w2 = tl.zeros([BLOCK_C], tl.float32)
    acc_b = tl.zeros([BLOCK_C], tl.float32)
    acc_gin = tl.zeros([BLOCK_C], tl.float32)
    step = N * C
    for start in range(0, rows_per_prog, BLOCK_R):
        local = start + tl.arange(0, BLOCK_R)
        rows = pid_r * rows_per_prog + local
        rmask = (rows < R) & (local < rows_per_prog)
        t = (rows // N) % T
        mask = rmask[:, None] & cmask[None, :]
        has_prev = mask & (t > 0)[:, None]
        has_next = mask & (t < T - 1)[:, None]
        offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
        g_prev = tl.load(g_ptr + offs - step, mask=has_prev, other=0.0).to(tl.float32)
        g_cur = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g_next = tl.load(g_ptr + offs + step, mask=has_next, other=0.0).to(tl.float32)
        h_prev = tl.load(h_ptr + offs - step, mask=has_prev, other=0.0).to(tl.float32)
        h_cur = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        h_next = tl.load(h_ptr + offs + step, mask=has_next, other=0.0).to(tl.float32)
        # h[t] feeds out[t+1] through w0, out[t] through w1 and out[t-1] through w2.
        gin = w0 * g_next + w1 * g_cur + w2 * g_prev
        tl.store(gin_ptr + offs, gin.to(gin_ptr.dtype.element_ty), mask=mask)
        acc_w0 += tl.sum(g_cur * h_prev, axis=0)
        acc_w1 += tl.sum(g_cur * h_cur, axis=0)
        acc_w2 += tl.sum(g_cur * h_next, axis=0)
        acc_b += tl.sum(g_cur, axis=0)
        acc_gin += tl.sum(gin, axis=0)
    plane = tl.num_programs(0) * C
    base = part_ptr + pid_r * C + cols
    tl.store(base, acc_w0, mask=cmask)
    tl.store(base + plane, acc_w1, mask=cmask)
    tl.store(base + 2 * plane, acc_w2, mask=cmask)
    tl.store(base + 3 * plane, acc_b, mask=cmask)
    tl.store(base + 4 * plane, acc_gin, mask=cmask)


def _interpreting() -> bool:
    return triton.knobs.runtime.interpret


def _tiles(rows: int, channels: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_C, rows per program of the reducing kernels).

    On GPU: 32 x 64 tiles (256-byte coalesced fp32 row segments) and enough programs to fill the SMs.
    Under the CPU interpreter every program costs Python overhead, so tiles are as large as possible.
    """
    if _interpreting():
        block_r = min(128, triton.next_power_of_2(rows))
        return (
            block_r,
            min(1024, triton.next_power_of_2(channels)),
            block_r * min(32, triton.cdiv(rows, block_r)),
        )
    return 32, 64, 256


def _grid(rows: int, channels: int, rows_per_prog: int, block_c: int) -> tuple[int, int]:
    return triton.cdiv(rows, rows_per_prog), triton.cdiv(channels, block_c)


def bn_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Channel mean and biased variance (fp32) of a contiguous (R, C) matrix."""
    rows, channels = x.shape
    block_r, block_c, per_prog = _tiles(rows, channels)
    grid = _grid(rows, channels, per_prog, block_c)
    part_mean = torch.empty(grid[0], channels, device=x.device, dtype=torch.float32)
    part_m2 = torch.empty_like(part_mean)
    _bn_stats_kernel[grid](x, part_mean, part_m2, rows, channels, per_prog, BLOCK_R=block_r, BLOCK_C=block_c)
    # Merge the few partials in fp64: (programs x C) values, negligible work.
    part_mean, part_m2 = part_mean.double(), part_m2.double()
    counts = (rows - torch.arange(grid[0], device=x.device) * per_prog).clamp(max=per_prog).double()[:, None]
    mean = (part_mean * counts).sum(0) / rows
    m2 = (part_m2 + counts * (part_mean - mean) ** 2).sum(0)
    return mean.float(), (m2 / rows).float()


def bn_normalise(x: Tensor, mean: Tensor, rstd: Tensor, dtype: torch.dtype) -> Tensor:
    rows, channels = x.shape
    block_r, block_c, _ = _tiles(rows, channels)
    y = torch.empty(rows, channels, device=x.device, dtype=dtype)
    _bn_normalise_kernel[_grid(rows, channels, block_r, block_c)](
        x, y, mean, rstd, rows, channels, BLOCK_R=block_r, BLOCK_C=block_c
    )
    return y


def bn_input_grad(mm: Tensor, xhat: Tensor, a: Tensor, b: Tensor, dtype: torch.dtype) -> Tensor:
    rows, channels = mm.shape
    block_r, block_c, _ = _tiles(rows, channels)
    dx = torch.empty(rows, channels, device=mm.device, dtype=dtype)
    _bn_input_grad_kernel[_grid(rows, channels, block_r, block_c)](
        mm, xhat, a, b, dx, rows, channels, BLOCK_R=block_r, BLOCK_C=block_c
    )
    return dx


def dw_forward(h: Tensor, weight: Tensor, bias: Tensor, frames: int, tokens: int) -> Tensor:
    """Depthwise (3,1,1) conv over time of (R, C) rows; weight (C, 3) and bias (C,) in fp32."""
    rows, channels = h.shape
    block_r, block_c, _ = _tiles(rows, channels)
    out = torch.empty_like(h)
    _dw_forward_kernel[_grid(rows, channels, block_r, block_c)](
        h, weight, bias, out, rows, channels, frames, tokens, BLOCK_R=block_r, BLOCK_C=block_c
    )
    return out


def dw_backward(
    grad: Tensor, h: Tensor, weight: Tensor, frames: int, tokens: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(input grad, weight grad (C, 3), bias grad (C,), column sums of the input grad), sums in fp32."""
    rows, channels = h.shape
    block_r, block_c, per_prog = _tiles(rows, channels)
    grid = _grid(rows, channels, per_prog, block_c)
    grad_in = torch.empty_like(h)
    partials = torch.empty(5, grid[0], channels, device=h.device, dtype=torch.float32)
    _dw_backward_kernel[grid](
        grad, h, weight, grad_in, partials, rows, channels, frames, tokens, per_prog,
        BLOCK_R=block_r, BLOCK_C=block_c,
    )  # fmt: skip
    sums = partials.sum(1)
    return grad_in, sums[:3].t(), sums[3], sums[4]
