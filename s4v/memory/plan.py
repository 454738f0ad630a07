"""`s4v plan`: the largest side network and batch that fit a GPU memory budget, by exact accounting.

Memory of a step is affine in the batch size (weights and optimizer states are fixed, activations
scale with it), so two accountings (batch 1 and 2) give the line; the predicted largest batch is
then checked by a third accounting at that batch. For each side depth (an even spread over the
frozen layers) the widest side network that still fits `--min-batch` is found by bisection over
the widths; the recommendation is the one with the most trainable parameters.

Data-parallel training over `--gpus` ranks is accounted per rank: `--shard-frozen` shards the frozen
tower over them (FSDP2, two gathered blocks at a time), `--zero-stage` (or the stage of a DeepSpeed
JSON, `--ds`) partitions the side network's optimizer states (1), gradients (2) and weights (3), and
`--side-checkpoint` recomputes side blocks in backward (see `s4v.memory.step.Parallel`).

Batches count videos per GPU, as `data.batch_size` does: with `--repeats R` (`data.num_repeats`, Table
12's repeated sampling) each video is R clips, and a batch of b videos is accounted as the b x R clips
the model sees.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import torch

from s4v.errors import UserError
from s4v.memory.step import SINGLE, GiB, Parallel, account_step
from s4v.memory.workloads import MethodSpec, workload
from s4v.models.architectures import BACKBONES

DIMS = (128, 192, 256, 320, 384, 448, 512, 576, 640, 768, 896, 1024)


@dataclass
class Candidate:
    layers: int
    dim: int
    max_batch: int  # videos per GPU, `repeats` clips each
    peak_gib: float  # at max_batch
    trainable_m: float
    per_video_gib: float  # all of a video's clips
    fixed_gib: float


class Planner:
    def __init__(
        self,
        backbone: str,
        budget_gib: float,
        frames: int,
        precision: str,
        attention: str,
        num_classes: int,
        side_checkpoint: bool = False,
        parallel: Parallel = SINGLE,
        repeats: int = 1,
    ) -> None:
        self.backbone, self.budget, self.frames = backbone, budget_gib * GiB, frames
        self.precision, self.attention, self.num_classes = precision, attention, num_classes
        self.side_checkpoint, self.parallel, self.repeats = side_checkpoint, parallel, repeats
        self.evaluations = 0
        self.verbose = False

    def spec(self, layers: int, dim: int, batch: int) -> MethodSpec:
        """The step of `batch` videos: the model's micro batch is their `repeats` clips each."""
        options = dict(layers=layers, dim=dim, checkpoint=self.side_checkpoint)
        clips = batch * self.repeats
        return MethodSpec("side4video", self.backbone, clips, self.frames, self.num_classes, options=options)

    def trainable_m(self, layers: int, dim: int) -> float:
        model = workload(self.spec(layers, dim, 1)).build(torch.device("meta"))
        return round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 2)

    def peak(self, layers: int, dim: int, batch: int):
        self.evaluations += 1
        spec = self.spec(layers, dim, batch)
        return account_step(workload(spec), self.precision, self.attention, parallel=self.parallel)

    def fit(self, layers: int, dim: int) -> Candidate:
        known: dict[int, int] = {}

        def probe(batch: int) -> int:
            if batch not in known:
                known[batch] = self.peak(layers, dim, batch).peak
            return known[batch]

        # The line through batches 2 and 4 (at batch 1 the peak can sit in the optimizer step instead),
        # then secant steps while the prediction does not fit, then an exact search of the edge.
        slope = max((probe(4) - probe(2)) / 2, 1.0)
        fixed = known[2] - 2 * slope
        guess = int((self.budget - fixed) // slope)
        for _ in range(4):
            if guess <= 4 or probe(guess) <= self.budget:
                break
            slope = (known[guess] - known[4]) / (guess - 4)
            guess = 4 + int((self.budget - known[4]) // slope)
        lo = max((b for b, p in known.items() if p <= self.budget), default=0)
        hi = min((b for b, p in known.items() if p > self.budget), default=None)
        if lo == 0 and (hi is None or hi > 1):
            lo = 1 if probe(1) <= self.budget else 0
            hi = hi if lo else 1
        while hi is None or lo + 1 < hi:
            mid = lo + 1 if hi is None else (lo + hi) // 2
            if probe(mid) <= self.budget:
                lo = mid
            else:
                hi = mid
        batch = lo
        peak = known[batch] if batch else known[min(known)]
        cand = Candidate(
            layers,
            dim,
            batch,
            round(peak / GiB, 3),
            self.trainable_m(layers, dim),
            round(slope / GiB, 4),
            round(fixed / GiB, 3),
        )
        if self.verbose:
            print(f"  l={layers:<3d} d={dim:<4d} max batch {batch:<4d} ({cand.peak_gib:.2f} GiB)", flush=True)
        return cand

    def widest(self, layers: int, dims: tuple[int, ...], min_batch: int) -> Candidate | None:
        """Bisection over widths: memory grows with the width, so the fitting ones are a prefix."""
        lo, hi, best = 0, len(dims) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            cand = self.fit(layers, dims[mid])
            if cand.max_batch >= min_batch:
                best, lo = cand, mid + 1
            else:
                hi = mid - 1
        return best


def depths(tower_layers: int) -> list[int]:
    """Side depths that spread evenly over the tower: divisors of L from L/8 to L/2 (and L for small towers)."""
    found = [n for n in range(1, tower_layers // 2 + 1) if tower_layers % n == 0 and n * 8 >= tower_layers]
    return found + [tower_layers] if tower_layers <= 24 else found


def zero_stage(path: str) -> int:
    """`zero_optimization.stage` of a DeepSpeed JSON (0 when it has none, as DeepSpeed reads it)."""
    try:
        with open(path) as f:
            ds = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"--ds {path}: {e}") from None
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise UserError(f"--ds {path}: zero_optimization.stage {stage!r} is not 0, 1, 2 or 3")
    return stage


def settings(planner: Planner) -> str:
    """The header's words for what differs from one GPU holding everything (nothing: today's header)."""
    words = []
    par = planner.parallel
    if par.ranks > 1 or par.shard_frozen or par.zero_stage:
        words.append(f"{par.ranks} GPU{'s' if par.ranks > 1 else ''}")
    if par.shard_frozen:
        words.append("frozen tower sharded")
    if par.zero_stage:
        words.append(f"ZeRO-{par.zero_stage}")
    if planner.side_checkpoint:
        words.append("side blocks checkpointed")
    if planner.repeats > 1:
        words.append(f"{planner.repeats} clips per video")
    return "".join(f", {w}" for w in words)


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="s4v plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--gpu-mem", type=float, required=True, help="memory budget per GPU, GiB")
    ap.add_argument(
        "--reserve",
        type=float,
        default=0.0,
        help="GiB kept free for what the allocator does not count: CUDA context (~0.5), DeepSpeed "
        "buckets, fragmentation (e.g. 1.0)",
    )
    ap.add_argument("--backbone", default="b16", choices=sorted(BACKBONES))
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--min-batch", type=int, default=16, help="smallest per-GPU batch (videos) worth training with")
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="clips per training video (data.num_repeats; Table 12: 2 on SSv1/SSv2): a batch of b videos "
        "is accounted as the b x R clips the model sees",
    )
    ap.add_argument("--precision", default="bf16", choices=["bf16", "amp", "fp32"])
    ap.add_argument("--attention", default="flash", choices=["flash", "math"])
    ap.add_argument("--num-classes", type=int, default=174)
    ap.add_argument("--layers", type=int, nargs="*", help="side depths (default: divisors of L in [L/8, L/2])")
    ap.add_argument("--dims", type=int, nargs="*", default=list(DIMS))
    ap.add_argument("--json", help="also write the candidates and the recommendation here")
    ap.add_argument("--gpus", type=int, default=1, help="data-parallel ranks; memory is accounted per GPU")
    ap.add_argument(
        "--shard-frozen",
        action="store_true",
        help="shard the frozen tower over the GPUs (FSDP2, model.shard_frozen): 1/N of it per GPU plus two "
        "all-gathered blocks",
    )
    ap.add_argument(
        "--side-checkpoint",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="recompute side blocks in backward (model.side_checkpoint). Default off on every backbone, "
        "also ViT-E whose presets train with it on: checkpointing only lowers memory, so a plan without "
        "it holds either way",
    )
    stage = ap.add_mutually_exclusive_group()
    stage.add_argument(
        "--zero-stage", type=int, choices=[0, 1, 2, 3], help="DeepSpeed ZeRO stage over the GPUs (default 0)"
    )
    stage.add_argument("--ds", help="DeepSpeed JSON whose zero_optimization.stage to account (ds_configs/*.json)")
    args = ap.parse_args(argv)
    tower_layers = BACKBONES[args.backbone].layers
    for layers in args.layers or ():
        if not BACKBONES[args.backbone].reads_evenly(layers):
            raise UserError(f"--layers {layers}: a side network must read {tower_layers} frozen layers evenly")
    if args.gpus < 1:
        raise UserError(f"--gpus {args.gpus}: need at least one GPU")
    if args.repeats < 1:
        raise UserError(f"--repeats {args.repeats}: need at least one clip per video")
    parallel = Parallel(args.gpus, args.shard_frozen, zero_stage(args.ds) if args.ds else args.zero_stage or 0)
    budget = args.gpu_mem - args.reserve
    planner = Planner(
        args.backbone,
        budget,
        args.frames,
        args.precision,
        args.attention,
        args.num_classes,
        args.side_checkpoint,
        parallel,
        args.repeats,
    )
    planner.verbose = True
    found = []
    for layers in args.layers or depths(tower_layers):
        cand = planner.widest(layers, tuple(sorted(args.dims)), args.min_batch)
        if cand is not None:
            found.append(cand)
    print(
        f"budget {budget:g} GiB ({args.gpu_mem:g} - reserve {args.reserve:g}), backbone {args.backbone}, "
        f"{args.frames} frames, {args.precision}, {args.attention} attention{settings(planner)} "
        f"({planner.evaluations} accountings)"
    )
    print("| layers | width | trainable (M) | max batch (videos) | peak at max batch (GiB) | GiB / video | fixed GiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for c in found:
        print(
            f"| {c.layers} | {c.dim} | {c.trainable_m:.2f} | {c.max_batch} | {c.peak_gib:.2f} | "
            f"{c.per_video_gib:.3f} | {c.fixed_gib:.2f} |"
        )
    if not found:
        print(
            f"nothing fits: even the narrowest side network needs more than {budget:g} GiB "
            f"at {args.min_batch} videos per GPU"
        )
        return 1
    best = max(found, key=lambda c: (c.trainable_m, c.max_batch))
    print(
        f"\nrecommended: side network l={best.layers}, d={best.dim} ({best.trainable_m:.2f} M trainable), "
        f"batch {best.max_batch} videos per GPU ({best.max_batch * args.repeats} clips), "
        f"peak {best.peak_gib:.2f} GiB of {budget:g}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"settings": vars(args), "candidates": [c.__dict__ for c in found], "recommended": best.__dict__},
                f,
                indent=1,
            )
    return 0
