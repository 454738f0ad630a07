"""Training throughput of Side4Video (ours-light, ours) vs ST-Adapter vs full fine-tuning on one frozen tower.

    python benchmarks/throughput.py                  # no CUDA: CPU, B/16 (random init), batch 2 x 8 frames, fp32
    python benchmarks/throughput.py --device cuda    # B/16 at the paper's batch (32), bf16 autocast, then each
                                                     # method at its largest batch in --budget-gib (40) GiB

Every method is one training step of the memory tables' workload (`s4v.memory.workloads`): forward under
autocast, backward, AdamW step, gradients dropped; all in this process, on one device, with the same
tower, frames and batch. Of the timed steps it reports the median one (its clips/s and its breakdown; a
neighbour's burst on a shared machine inflates single steps, which a mean would carry):
- data: producing the synthetic batch on the device (a real loader's wait; ~0 here);
- frozen fwd / side fwd: Side4Video's frozen tower calls (`embed`, `block`, timed by wrapping them on the
  backbone object) vs the rest of its forward (side network, head, loss). ST-Adapter's adapters sit
  inside the tower's blocks, and full fine-tuning trains the tower itself, so their whole forward is
  counted as "frozen fwd";
- backward; optimizer (AdamW step + zero_grad).
FLOPs per step are counted on the meta device (`s4v.memory.perf.train_step_flops`, forward + backward, a
multiply-add = 2); MFU = FLOPs / step seconds / the device's dense peak (n/a on CPU and in fp32).
Side4Video's temporal-conv branch runs as training runs it (`--temporal-impl auto`: the fused Triton kernels
on CUDA, PyTorch on CPU). The largest batch in the budget comes from the exact step accounting
(`s4v.memory.step.account_step`, flash attention, the same autocast) on the meta device, where the branch
is PyTorch's (it keeps more for backward than the fused one: the planned batches err on the safe side).
Writes JSON (--out) and a PNG beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import platform
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import torch

from s4v.core.choices import TemporalImpl
from s4v.memory.perf import mfu, peak_flops, train_step_flops
from s4v.memory.plan import largest_fitting
from s4v.memory.step import GiB, Precision, Workload, account_step, make_optimizer
from s4v.memory.workloads import SIDE4VIDEO, MethodSpec, workload
from s4v.models.architectures import BACKBONES
from s4v.models.backbone import FrozenBackbone

METHODS = ("ours-light", "ours", "st-adapter", "full")
PHASES = ("data", "frozen_fwd", "side_fwd", "backward", "optimizer")
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Goals for ours-light over ST-Adapter (clips/s); the largest-batch one needs a GPU budget to mean anything.
GOAL_SAME_BATCH = 1.9
GOAL_LARGEST_BATCH = 2.5
FOOTNOTE = (
    "¹ Side4Video: frozen fwd = the frozen tower's `embed` / `block` calls, side fwd = the rest of the forward "
    "(side network, head, loss). ST-Adapter and full fine-tuning: the whole forward is counted as frozen fwd "
    "(the adapters sit inside the tower's blocks; full fine-tuning trains the tower itself)."
)


def precision_of(dtype: str) -> Precision:
    """fp32 weights and optimizer, `dtype` autocast (bf16 needs no loss scale; fp16 runs unscaled: timing only)."""
    return Precision(f"{dtype}-autocast" if AUTOCAST[dtype] else dtype, torch.float32, AUTOCAST[dtype], master=False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    """Wall time once the device has finished everything queued so far."""
    sync(device)
    return time.perf_counter()


class FrozenTimer:
    """Seconds spent in a frozen tower's `embed` / `block` calls.

    The methods are wrapped on the backbone instance, so the model code stays as it is:
    `SideNetwork.forward` looks them up on the object and finds the wrappers.
    """

    def __init__(self, backbone: FrozenBackbone, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        for name in ("embed", "block"):
            setattr(backbone, name, self._timed(getattr(backbone, name)))

    def _timed(self, fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> torch.Tensor:
            start = clock(self.device)
            out = fn(*args, **kwargs)
            self.seconds += clock(self.device) - start
            return out

        return timed


def largest_batch(spec: MethodSpec, budget: float, precision: Precision, attention: str = "flash") -> tuple[int, int]:
    """(largest batch of `spec` whose accounted step peak fits `budget` bytes, its peak); batch 0 if none does.

    The planner's search (`s4v.memory.plan.largest_fitting`, as `Planner.fit` runs it): from batch 2, as at
    batch 1 the peak can sit in the optimizer step instead.
    """

    def account(batch: int) -> int:
        return account_step(workload(replace(spec, batch=batch)), precision, attention).peak

    edge = largest_fitting(account, budget, 2, 4)
    return edge.n, edge.peaks.get(edge.n, 0)  # no batch fits: no peak to report (0)


def time_steps(
    work: Workload, device: torch.device, precision: Precision, warmup: int, steps: int
) -> tuple[list[dict[str, float]], float | None]:
    """Per timed step, seconds of each phase (they tile the step); and the CUDA peak GiB over the timed steps."""
    torch.manual_seed(0)
    model = work.build(device)
    model.train()
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], precision)
    backbone = getattr(model, "backbone", None)
    frozen = FrozenTimer(backbone, device) if isinstance(backbone, FrozenBackbone) else None
    autocast = torch.autocast(device.type, dtype=precision.autocast) if precision.autocast else contextlib.nullcontext()
    records = []
    for index in range(warmup + steps):
        if index == warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = clock(device)
        inputs = work.inputs(device)
        t1 = clock(device)
        frozen_before = frozen.seconds if frozen else 0.0
        with autocast:
            loss = work.loss(model, inputs)
        t2 = clock(device)
        loss.backward()
        t3 = clock(device)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = clock(device)
        del loss, inputs
        forward = t2 - t1
        frozen_fwd = frozen.seconds - frozen_before if frozen else forward
        if index >= warmup:
            records.append(
                dict(
                    data=t1 - t0,
                    frozen_fwd=frozen_fwd,
                    side_fwd=forward - frozen_fwd,
                    backward=t3 - t2,
                    optimizer=t4 - t3,
                    step=t4 - t0,
                )
            )
    peak = torch.cuda.max_memory_allocated(device) / GiB if device.type == "cuda" else None
    del model, opt
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return records, peak


def measure(
    spec: MethodSpec, setting: str, device: torch.device, precision: Precision, warmup: int, steps: int
) -> dict[str, Any]:
    """One table row: the method's timed steps, counted FLOPs, TFLOP/s and MFU."""
    work = workload(spec)
    records, cuda_peak = time_steps(work, device, precision, warmup, steps)
    # The median step (the upper middle one for an even count) with its own phases, which tile it.
    median = sorted(records, key=lambda r: r["step"])[len(records) // 2]
    flops = train_step_flops(work)
    peak = peak_flops(device, precision.autocast or torch.float32)
    return dict(
        method=spec.method,
        setting=setting,
        backbone=spec.backbone,
        batch=spec.batch,
        frames=spec.frames,
        clips_per_s=spec.batch / median["step"],
        step_s=median["step"],
        step_s_all=[r["step"] for r in records],
        breakdown_s={k: median[k] for k in PHASES},
        flops=flops,
        tflops=flops / median["step"] / 1e12,
        mfu=mfu(flops, median["step"], peak),
        cuda_peak_gib=cuda_peak,
    )


def _cell(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| method | setting | batch | clips/s | step s | data s | frozen fwd s¹ | side fwd s¹ | backward s "
        "| optimizer s | GFLOPs / step | TFLOP/s | MFU |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b = r["breakdown_s"]
        lines.append(
            f"| {r['method']} | {r['setting']} | {r['batch']} x {r['frames']} | {r['clips_per_s']:.3f} "
            f"| {r['step_s']:.3f} | {b['data']:.3f} | {b['frozen_fwd']:.3f} | {b['side_fwd']:.3f} "
            f"| {b['backward']:.3f} | {b['optimizer']:.3f} | {r['flops'] / 1e9:.1f} | {r['tflops']:.3f} "
            f"| {_cell(r['mfu'], '.1%')} |"
        )
    return "\n".join([*lines, "", FOOTNOTE])


def figure(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """clips/s per row, and the per-clip breakdown (seconds per clip, stacked by phase)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['method']}\n({r['setting']}, B={r['batch']})" for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.6 * len(rows) + 2))
    left.barh(labels, [r["clips_per_s"] for r in rows], color=[f"C{i}" for i in range(len(rows))])
    left.set_xlabel("training clips / s")
    left.invert_yaxis()
    start = [0.0] * len(rows)
    for phase in PHASES:
        per_clip = [r["breakdown_s"][phase] / r["batch"] for r in rows]
        right.barh(labels, per_clip, left=start, label=phase.replace("_", " "))
        start = [s + w for s, w in zip(start, per_clip, strict=True)]
    right.set_xlabel("seconds per clip (step / batch)")
    right.set_yticks(range(len(rows)), [""] * len(rows))
    right.invert_yaxis()
    right.legend(fontsize=8, ncol=len(PHASES), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _row(rows: list[dict[str, Any]], method: str, setting: str) -> dict[str, Any]:
    return next(r for r in rows if r["method"] == method and r["setting"] == setting)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--backbone", default="b16", choices=sorted(BACKBONES))
    ap.add_argument("--batch", type=int, help="clips per step (default: 2 on CPU, the paper's batch on CUDA)")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument(
        "--temporal-impl",
        default="auto",
        choices=get_args(TemporalImpl),
        help="Side4Video's temporal-conv branch; auto (as training): fused Triton kernels on CUDA, PyTorch on CPU",
    )
    ap.add_argument(
        "--dtype",
        choices=sorted(AUTOCAST),
        help="autocast dtype (default: fp32 on CPU, bf16 on CUDA; fp16 runs without loss scaling)",
    )
    ap.add_argument("--warmup", type=int, help="untimed steps per method (default: 1 on CPU, 3 on CUDA)")
    ap.add_argument("--steps", type=int, help="timed steps per method (default: 3 on CPU, 10 on CUDA)")
    ap.add_argument(
        "--budget-gib",
        type=float,
        default=40.0,
        help="CUDA: also time each method at its largest batch whose accounted peak fits this (0: skip)",
    )
    ap.add_argument("--out", default="outputs/bench/throughput.json", help="JSON path; the PNG goes beside it")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    paper_batch = BACKBONES[args.backbone].paper_batch or 32  # the tiny towers have no paper batch
    batch = args.batch or (paper_batch if cuda else 2)
    dtype = args.dtype or ("bf16" if cuda else "fp32")
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    steps = args.steps if args.steps is not None else (10 if cuda else 3)
    precision = precision_of(dtype)
    device_name = torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()
    t_start = time.perf_counter()

    def spec_of(method: str) -> MethodSpec:
        options = dict(temporal_impl=args.temporal_impl) if method in SIDE4VIDEO else {}
        return MethodSpec(method, args.backbone, batch, args.frames, options=options)

    rows = []
    for method in METHODS:
        rows.append(measure(spec_of(method), "same batch", device, precision, warmup, steps))
        print(f"  {method}: {rows[-1]['clips_per_s']:.3f} clips/s", flush=True)
    largest: dict[str, dict[str, float]] = {}
    if cuda and args.budget_gib > 0:
        for method in METHODS:
            spec = spec_of(method)
            fit, accounted = largest_batch(spec, args.budget_gib * GiB, precision)
            largest[method] = dict(batch=fit, accounted_gib=accounted / GiB)
            if fit:
                rows.append(measure(replace(spec, batch=fit), "largest batch", device, precision, warmup, steps))
                rows[-1]["accounted_peak_gib"] = accounted / GiB
                print(f"  {method} at batch {fit}: {rows[-1]['clips_per_s']:.3f} clips/s", flush=True)

    ours, adapter = _row(rows, "ours-light", "same batch"), _row(rows, "st-adapter", "same batch")
    ratios: dict[str, float | None] = dict(
        same_batch=ours["clips_per_s"] / adapter["clips_per_s"],
        flops_st_adapter_over_ours_light=adapter["flops"] / ours["flops"],
        largest_batch=None,
    )
    title = (
        f"{BACKBONES[args.backbone].title}, {args.frames} frames, {dtype}, {device_name}, torch {torch.__version__}"
        + ("" if cuda else f", {torch.get_num_threads()} threads")
    )
    print(f"\ntraining throughput, {title}; median of {steps} timed steps after {warmup} warm-up\n")
    print(markdown(rows))
    print(f"\nside4video / st-adapter clips/s = {ratios['same_batch']:.2f}")
    met = "met" if ratios["same_batch"] >= GOAL_SAME_BATCH else "not met"
    print(f"  goal >= {GOAL_SAME_BATCH}x at the same batch ({batch} x {args.frames}): {met}")
    if largest.get("ours-light", {}).get("batch") and largest.get("st-adapter", {}).get("batch"):
        ours_l, adapter_l = _row(rows, "ours-light", "largest batch"), _row(rows, "st-adapter", "largest batch")
        ratios["largest_batch"] = ours_l["clips_per_s"] / adapter_l["clips_per_s"]
        print(
            f"side4video / st-adapter clips/s at each method's largest batch in {args.budget_gib:g} GiB "
            f"(ours-light {ours_l['batch']}, st-adapter {adapter_l['batch']}) = {ratios['largest_batch']:.2f}"
        )
        met = "met" if ratios["largest_batch"] >= GOAL_LARGEST_BATCH else "not met"
        print(f"  goal >= {GOAL_LARGEST_BATCH}x at each method's largest batch in {args.budget_gib:g} GiB: {met}")
    print(
        f"st-adapter / ours-light FLOPs per step = {ratios['flops_st_adapter_over_ours_light']:.2f} "
        "(counted forward + backward: the speed-up the FLOPs alone would give)"
    )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    figure(rows, png, f"Training throughput: {title}")
    report = dict(
        settings=dict(vars(args), batch=batch, dtype=dtype, warmup=warmup, steps=steps),
        device=device_name,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        results=rows,
        largest_batch=largest,
        ratios=ratios,
        goals=dict(same_batch=GOAL_SAME_BATCH, largest_batch=GOAL_LARGEST_BATCH),
        notes=FOOTNOTE,
        wall_s=time.perf_counter() - t_start,
    )
    out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {out}, {png} in {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
