"""Fused Triton temporal branch vs PyTorch eager vs torch.compile at the side shapes of the presets.

    python benchmarks/temporal_conv_bn.py                      # CUDA if present, else CPU
    python benchmarks/temporal_conv_bn.py --device cpu --no-compile

Variants: eager (the PyTorch reference), fused (Triton, saves xhat and h1), fused-recompute (saves
xhat only, recomputes h1 in backward), compile (torch.compile of the reference).
Per preset shape (batch per Table 2 of the paper: 32 for B/16, 16 for L/14; 16 for E/14-light, which
the paper trains under a 40 GB limit) and dtype, it measures one training step of the branch:
- saved activations: exact bytes autograd keeps for backward (distinct storages, weights excluded);
- on CUDA: forward and forward+backward time (median of CUDA-event timed repeats) and peak memory
  above the step's inputs (torch.cuda.max_memory_allocated);
- on CPU: wall time of eager and compile; the fused path then runs in Triton's interpreter, so it
  is not timed (its saved bytes are still exact).
Prints one table with ratios against eager and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from s4v.kernels import TemporalConvBranch
from s4v.memory.tracker import saved_activation_bytes
from s4v.models.architectures import PRESETS

# The side shapes of the presets the paper trains at each tower's size (B/16, L/14, E/14-light), at the
# per-GPU batch of the paper's memory tables; `tiny` (batch 2, not a default) is the quickest CPU smoke run.
SHAPE_PRESETS = ("b16", "l14", "e14-light")
SMOKE_BATCH = 2


def shapes() -> dict[str, tuple[int, int, int, int]]:
    """name -> (side width d, batch, frames, patch tokens N), from the architecture table."""
    out = {}
    for name in (*SHAPE_PRESETS, "tiny"):
        p = PRESETS[name]
        out[name] = (p.side_dim, p.tower.paper_batch or SMOKE_BATCH, p.num_frames, p.tower.num_patches)
    return out


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MIB = 2.0**20


@dataclass
class Result:
    shape: str
    dtype: str
    variant: str
    tokens: str
    saved_mib: float
    fwd_ms: float | None
    fwd_bwd_ms: float | None
    peak_mib: float | None
    rel_diff: float | None  # max |out - eager| / max |eager| over the output and the input grad
    note: str


def _branch(dim: int, impl: str, device: torch.device, dtype: torch.dtype) -> TemporalConvBranch:
    torch.manual_seed(0)
    return TemporalConvBranch(dim, impl=impl).to(device=device, dtype=dtype).train()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(fn: Callable[[], None], device: torch.device, warmup: int, repeat: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _peak_mib(step: Callable[[], None], device: torch.device) -> float:
    """Peak allocated memory of one step above what was allocated before it (CUDA only)."""
    _sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / MIB


def _rel_diff(ours: tuple[torch.Tensor, ...], eager: tuple[torch.Tensor, ...]) -> float:
    pairs = zip(ours, eager, strict=True)
    return max(((a.float() - b.float()).abs().max() / b.float().abs().max()).item() for a, b in pairs)


def bench_one(
    shape: str, dtype_name: str, variant: str, device: torch.device, warmup: int, repeat: int, eager_out: dict
) -> Result:
    """Measure one variant; eager_out holds eager's (output, input grad) per (shape, dtype) to compare with."""
    dim, batch, frames, tokens = shapes()[shape]
    dtype = DTYPES[dtype_name]
    module = _branch(dim, "triton" if variant.startswith("fused") else "reference", device, dtype)
    module.recompute = variant == "fused-recompute"
    model = torch.compile(module, dynamic=False) if variant == "compile" else module
    x = torch.randn(batch, frames, tokens, dim, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn_like(x)

    def forward() -> None:
        model(x)

    def step() -> torch.Tensor:
        module.zero_grad(set_to_none=True)
        x.grad = None
        out = model(x)
        out.backward(grad)
        return out

    tokens_str = f"{batch}x{frames}x{tokens}x{dim}"
    if device.type == "cpu" and module.uses_triton(x):  # interpreted kernels: bytes are exact, time is not
        saved = saved_activation_bytes(lambda: model(x), module.parameters()) / MIB
        return Result(shape, dtype_name, variant, tokens_str, saved, None, None, None, None, "interpreted, untimed")
    outputs = (step().detach(), x.grad.detach().clone())  # also compiles / loads the kernels
    key = (shape, dtype_name)
    rel_diff = _rel_diff(outputs, eager_out[key]) if key in eager_out else None
    if variant == "eager":
        eager_out[key] = outputs
    del outputs
    saved = saved_activation_bytes(lambda: model(x), module.parameters()) / MIB
    fwd = _time_ms(forward, device, warmup, repeat)
    fwd_bwd = _time_ms(step, device, warmup, repeat)
    peak = _peak_mib(step, device) if device.type == "cuda" else None
    return Result(shape, dtype_name, variant, tokens_str, saved, fwd, fwd_bwd, peak, rel_diff, "")


def _ratio(num: float | None, den: float | None) -> str:
    return f"{num / den:.2f}x" if num and den else "-"


def _ms(value: float | None, note: str) -> str:
    return (note or "-") if value is None else f"{value:.2f}"


def format_table(results: list[Result]) -> str:
    """Markdown table; time ratio = eager / variant (higher is faster), byte ratios = variant / eager."""
    head = (
        "| shape | dtype | variant | B x T x N x d | saved MiB | saved vs eager | fwd ms | fwd+bwd ms "
        "| speedup vs eager | peak MiB | peak vs eager | rel diff vs eager |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    eager = {(r.shape, r.dtype): r for r in results if r.variant == "eager"}
    for r in results:
        e = eager[(r.shape, r.dtype)]
        speedup = _ratio(e.fwd_bwd_ms, r.fwd_bwd_ms)
        peak = "-" if r.peak_mib is None else f"{r.peak_mib:.0f}"
        lines.append(
            f"| {r.shape} | {r.dtype} | {r.variant} | {r.tokens} "
            f"| {r.saved_mib:.1f} | {_ratio(r.saved_mib, e.saved_mib)} "
            f"| {_ms(r.fwd_ms, r.note)} | {_ms(r.fwd_bwd_ms, r.note)} | {speedup} | {peak} "
            f"| {_ratio(r.peak_mib, e.peak_mib)} | {'-' if r.rel_diff is None else f'{r.rel_diff:.1e}'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    names = ", ".join((*SHAPE_PRESETS, "tiny"))
    parser.add_argument("--shapes", default=",".join(SHAPE_PRESETS), help=f"comma list of {names}")
    parser.add_argument("--dtypes", default=None, help="comma list of fp32, bf16 (default: both on CUDA, fp32 on CPU)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--warmup", type=int, default=None, help="default 5 on CUDA, 0 on CPU")
    parser.add_argument("--repeat", type=int, default=None, help="default 20 on CUDA, 1 on CPU")
    parser.add_argument("--out", default="outputs/bench/temporal_conv_bn.json")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if not cuda:  # Triton kernels run interpreted on CPU; read when they are first imported (first fused call)
        os.environ.setdefault("TRITON_INTERPRET", "1")
    dtypes = (args.dtypes or ("fp32,bf16" if cuda else "fp32")).split(",")
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 0)
    repeat = args.repeat if args.repeat is not None else (20 if cuda else 1)
    variants = ["eager", "fused", "fused-recompute"] + ([] if args.no_compile else ["compile"])
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for every variant

    results, eager_out = [], {}
    for shape in args.shapes.split(","):
        for dtype_name in dtypes:
            for variant in variants:
                result = bench_one(shape, dtype_name, variant, device, warmup, repeat, eager_out)
                print(f"  {shape} {dtype_name} {variant}: {asdict(result)}", file=sys.stderr, flush=True)
                results.append(result)
                if cuda:
                    torch.cuda.empty_cache()
            eager_out.clear()

    device_name = torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()
    print(f"temporal branch BN3d+PW+DW+PW, one training step, device: {device_name}, torch {torch.__version__}")
    print(format_table(results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"device": device_name, "torch": torch.__version__, "results": [asdict(r) for r in results]}
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
