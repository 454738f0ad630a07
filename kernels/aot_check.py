"""Compile every Triton kernel of `s4v.kernels.triton_ops` to a CUDA cubin on a machine without a GPU.

The CPU interpreter accepts code that the real compiler rejects (loop-carried type changes, bad
casts, ...), so this is the GPU-readiness check that CI can run:

    python -m s4v.kernels.aot_check            # sm_80 and sm_90, fp32 / fp16 / bf16 storage

Must run with TRITON_INTERPRET unset (interpreted kernels cannot be compiled).
"""

from __future__ import annotations

import argparse

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from s4v.kernels import triton_ops as ops

BLOCKS = {"BLOCK_R": 32, "BLOCK_C": 64}


def _signatures(data: str) -> dict[str, dict[str, str]]:
    """Argument types per kernel with activations stored as `data` (fp32, fp16 or bf16)."""
    act, f32 = f"*{data}", "*fp32"
    return {
        "_bn_stats_kernel": dict(x_ptr=act, mean_ptr=f32, m2_ptr=f32, R="i32", C="i32", rows_per_prog="i32"),
        "_bn_normalise_kernel": dict(x_ptr=act, y_ptr=act, mean_ptr=f32, rstd_ptr=f32, R="i32", C="i32"),
        "_bn_input_grad_kernel": dict(mm_ptr=act, xhat_ptr=act, a_ptr=f32, b_ptr=f32, dx_ptr=f32, R="i32", C="i32"),
        "_dw_forward_kernel": dict(h_ptr=act, w_ptr=f32, bias_ptr=f32, out_ptr=act, R="i32", C="i32", T="i32", N="i32"),
        "_dw_backward_kernel": dict(
            g_ptr=act, h_ptr=act, w_ptr=f32, gin_ptr=act, part_ptr=f32, R="i32", C="i32", T="i32", N="i32",
            rows_per_prog="i32",
        ),
    }  # fmt: skip


def compile_all(arch: int, data: str) -> dict[str, int]:
    """Compile each kernel for sm_`arch`; returns the cubin size in bytes per kernel."""
    if triton.knobs.runtime.interpret:
        raise RuntimeError("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    sizes = {}
    for name, signature in _signatures(data).items():
        kernel = getattr(ops, name)
        signature = {**signature, **{k: "constexpr" for k in BLOCKS}}
        assert list(signature) == kernel.arg_names, (name, kernel.arg_names)
        compiled = triton.compile(
            ASTSource(fn=kernel, signature=signature, constexprs=BLOCKS), target=GPUTarget("cuda", arch, 32)
        )
        sizes[name] = len(compiled.asm["cubin"])
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="80,90")
    parser.add_argument("--dtypes", default="fp32,fp16,bf16")
    args = parser.parse_args(argv)
    for arch in map(int, args.archs.split(",")):
        for data in args.dtypes.split(","):
            sizes = compile_all(arch, data)
            print(f"sm_{arch} {data}: " + ", ".join(f"{k} {v} B" for k, v in sizes.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
