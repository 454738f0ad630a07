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

A sweep trains K side networks (members) on one frozen tower (`SweepClassifier`): the tower's weights and
its forward are paid once, each member adds its own side network's weights, gradients, optimizer states
and activations. `--members K` plans K identical members of every candidate; `--members-fit` answers
instead how many members of one side network (one `--layers` and one `--dims`, by default the backbone's
light preset's) fit at `--min-batch` videos per GPU. Memory is close to affine in K too: the line
through two and three members, checked by accounting at its prediction and one member more (secant steps
where the peak has moved, as for batches).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass

import torch

from s4v.core.errors import UserError
from s4v.memory.step import SINGLE, GiB, Parallel, account_step
from s4v.memory.workloads import MethodSpec, workload
from s4v.models.architectures import BACKBONES, PRESETS, find_preset

DIMS = (128, 192, 256, 320, 384, 448, 512, 576, 640, 768, 896, 1024)


@dataclass
class Candidate:
    layers: int
    dim: int
    max_batch: int  # videos per GPU, `repeats` clips each
    peak_gib: float  # at max_batch
    trainable_m: float  # of one member
    per_video_gib: float  # all of a video's clips
    fixed_gib: float


@dataclass
class MembersFit:
    """How many members of one side network fit at a batch."""

    layers: int
    dim: int
    batch: int  # videos per GPU
    members: int  # the most that fit; 0: not one
    peak_gib: float  # at `members` (at one when none fits)
    over_gib: float  # at one member more: over the budget
    per_member_gib: float
    fixed_gib: float  # the line at no member: the tower and the batch
    trainable_m: float  # of one member


@dataclass
class Edge:
    """The largest n whose peak fits a budget, the peaks accounted to find it, and the line that predicted it."""

    n: int
    peaks: dict[int, int]
    slope: float  # bytes per unit of n: the last secant
    fixed: float  # bytes at n = 0 on the first line

    @property
    def peak(self) -> int:
        """At n; at the smallest n accounted when none fits."""
        return self.peaks[self.n] if self.n else self.peaks[min(self.peaks)]


def largest_fitting(account: Callable[[int], int], budget: float, a: int, b: int) -> Edge:
    """The largest n whose `account(n)` (peak bytes, growing with n, close to affine in it from `a` on) fits.

    The line through a and b, then secant steps while its prediction does not fit, then an exact
    search of the edge: n + 1 is accounted (over the budget), and so is n when it is not 0.
    """
    known: dict[int, int] = {}

    def probe(n: int) -> int:
        if n not in known:
            known[n] = account(n)
        return known[n]

    slope = max((probe(b) - probe(a)) / (b - a), 1.0)
    fixed = known[a] - a * slope
    guess = int((budget - fixed) // slope)
    for _ in range(4):
        if guess <= b or probe(guess) <= budget:
            break
        slope = (known[guess] - known[b]) / (guess - b)
        guess = b + int((budget - known[b]) // slope)
    lo = max((n for n, p in known.items() if p <= budget), default=0)
    hi = min((n for n, p in known.items() if p > budget), default=None)
    if lo == 0 and (hi is None or hi > 1):
        lo = 1 if probe(1) <= budget else 0
        hi = hi if lo else 1
    while hi is None or lo + 1 < hi:
        mid = lo + 1 if hi is None else (lo + hi) // 2
        if probe(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return Edge(lo, known, slope, fixed)


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
        members: int = 1,
    ) -> None:
        self.backbone, self.budget, self.frames = backbone, budget_gib * GiB, frames
        self.precision, self.attention, self.num_classes = precision, attention, num_classes
        self.side_checkpoint, self.parallel, self.repeats = side_checkpoint, parallel, repeats
        self.members = members  # of every candidate the batch search accounts
        self.evaluations = 0
        self.verbose = False

    def spec(self, layers: int, dim: int, batch: int, members: int | None = None) -> MethodSpec:
        """The step of `batch` videos (the model's micro batch is their `repeats` clips each) for `members`
        side networks on the tower (None: the planner's)."""
        options = dict(layers=layers, dim=dim, checkpoint=self.side_checkpoint)
        clips = batch * self.repeats
        k = self.members if members is None else members
        return MethodSpec("side4video", self.backbone, clips, self.frames, self.num_classes, options=options, members=k)

    def trainable_m(self, layers: int, dim: int) -> float:
        """Of one member: a sweep's members are alike."""
        model = workload(self.spec(layers, dim, 1, members=1)).build(torch.device("meta"))
        return round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 2)

    def peak(self, layers: int, dim: int, batch: int, members: int | None = None):
        self.evaluations += 1
        spec = self.spec(layers, dim, batch, members)
        return account_step(workload(spec), self.precision, self.attention, parallel=self.parallel)

    def fit(self, layers: int, dim: int) -> Candidate:
        # From batch 2 (at batch 1 the peak can sit in the optimizer step instead).
        edge = largest_fitting(lambda batch: self.peak(layers, dim, batch).peak, self.budget, 2, 4)
        cand = Candidate(
            layers,
            dim,
            edge.n,
            round(edge.peak / GiB, 3),
            self.trainable_m(layers, dim),
            round(edge.slope / GiB, 4),
            round(edge.fixed / GiB, 3),
        )
        if self.verbose:
            print(f"  l={layers:<3d} d={dim:<4d} max batch {edge.n:<4d} ({cand.peak_gib:.2f} GiB)", flush=True)
        return cand

    def most_members(self, layers: int, dim: int, batch: int) -> MembersFit:
        """The most members of side network (layers, dim) that fit at `batch` videos per GPU."""

        def account(members: int) -> int:
            peak = self.peak(layers, dim, batch, members).peak
            if self.verbose:
                print(f"  l={layers:<3d} d={dim:<4d} members {members:<4d} ({peak / GiB:.3f} GiB)", flush=True)
            return peak

        # From two members: at one, the frozen tower's transients can set the peak in the forward pass; with
        # more, the members' own bytes set it.
        edge = largest_fitting(account, self.budget, 2, 3)
        return MembersFit(
            layers,
            dim,
            batch,
            edge.n,
            round(edge.peak / GiB, 3),
            round(edge.peaks[edge.n + 1] / GiB, 3),
            round(edge.slope / GiB, 4),
            round(edge.fixed / GiB, 3),
            self.trainable_m(layers, dim),
        )

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
    if planner.members > 1:
        words.append(f"{planner.members} members on the tower")
    return "".join(f", {w}" for w in words)


def header(planner: Planner, args: argparse.Namespace, budget: float) -> str:
    """The settings line both modes print first."""
    return (
        f"budget {budget:g} GiB ({args.gpu_mem:g} - reserve {args.reserve:g}), backbone {args.backbone}, "
        f"{args.frames} frames, {args.precision}, {args.attention} attention{settings(planner)} "
        f"({planner.evaluations} accountings)"
    )


def table(planner: Planner, args: argparse.Namespace, budget: float) -> int:
    """The widest side network of each depth that fits `--min-batch`, and the largest of them."""
    found = []
    for layers in args.layers or depths(BACKBONES[args.backbone].layers):
        cand = planner.widest(layers, tuple(sorted(args.dims or DIMS)), args.min_batch)
        if cand is not None:
            found.append(cand)
    print(header(planner, args, budget))
    trainable = "trainable (M)" if args.members == 1 else "trainable per member (M)"
    print(f"| layers | width | {trainable} | max batch (videos) | peak at max batch (GiB) | GiB / video | fixed GiB |")
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
    networks = "side network" if args.members == 1 else f"{args.members} side networks"
    each = "" if args.members == 1 else " each"
    print(
        f"\nrecommended: {networks} l={best.layers}, d={best.dim} ({best.trainable_m:.2f} M trainable{each}), "
        f"batch {best.max_batch} videos per GPU ({best.max_batch * args.repeats} clips), "
        f"peak {best.peak_gib:.2f} GiB of {budget:g}"
    )
    write_json(args, candidates=[c.__dict__ for c in found], recommended=best.__dict__)
    return 0


def one_side_network(args: argparse.Namespace) -> tuple[int, int, str]:
    """`--members-fit`'s side network: one --layers and one --dims, each by default the light preset's."""
    for flag, given in (("--layers", args.layers), ("--dims", args.dims)):
        if given and len(given) > 1:
            raise UserError(f"{flag} {' '.join(map(str, given))}: --members-fit plans one side network, give one")
    preset = find_preset("recognition", args.backbone)
    layers = args.layers[0] if args.layers else PRESETS[preset].side_layers
    dim = args.dims[0] if args.dims else PRESETS[preset].side_dim
    given = args.layers or args.dims
    return layers, dim, "" if given else f" ({preset}'s)"


def members_fit(planner: Planner, args: argparse.Namespace, budget: float) -> int:
    """How many members of one side network fit at `--min-batch` videos per GPU."""
    layers, dim, source = one_side_network(args)
    fit = planner.most_members(layers, dim, args.min_batch)
    print(header(planner, args, budget))
    network = f"l={layers}, d={dim}{source}, {fit.trainable_m:.2f} M trainable each"
    at = f"at {args.min_batch} videos per GPU ({args.min_batch * args.repeats} clips)"
    if not fit.members:
        print(f"not one member fits: side network {network} needs {fit.peak_gib:.3f} GiB {at}, over {budget:g}")
        return 1
    print(
        f"members fit: {fit.members} side network{'s' if fit.members > 1 else ''} {network}, {at}: "
        f"peak {fit.peak_gib:.3f} GiB of {budget:g}, "
        f"{fit.members + 1} would need {fit.over_gib:.3f}"
    )
    print(f"each member adds {fit.per_member_gib:.3f} GiB to {fit.fixed_gib:.3f} GiB fixed (the line at no member)")
    write_json(args, members_fit=fit.__dict__)
    return 0


def write_json(args: argparse.Namespace, **result) -> None:
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), **result}, f, indent=1)


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
    ap.add_argument(
        "--layers",
        type=int,
        nargs="*",
        help="side depths (default: divisors of L in [L/8, L/2]; --members-fit: one, default the light preset's)",
    )
    ap.add_argument(
        "--dims",
        type=int,
        nargs="*",
        help=f"side widths (default: {' '.join(map(str, DIMS))}; --members-fit: one, default the light preset's)",
    )
    ap.add_argument("--json", help="also write the candidates and the recommendation (or the members fit) here")
    sweep = ap.add_mutually_exclusive_group()
    sweep.add_argument(
        "--members",
        type=int,
        default=1,
        help="side networks trained together on the one frozen tower (a sweep): the table fits K of each",
    )
    sweep.add_argument(
        "--members-fit",
        action="store_true",
        help="instead of the table: how many members of one side network fit at --min-batch videos per GPU",
    )
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
    if args.members < 1:
        raise UserError(f"--members {args.members}: need at least one side network on the tower")
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
        args.members,
    )
    planner.verbose = True
    return members_fit(planner, args, budget) if args.members_fit else table(planner, args, budget)
