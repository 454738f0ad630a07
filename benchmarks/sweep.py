"""What one frozen pass for K side networks saves: a K-member sweep step against K separate runs.

    python benchmarks/sweep.py                 # CPU: B/16-light (random init), batch 2 x 8 frames, fp32
    python benchmarks/sweep.py --device cuda   # the same on a GPU, bf16 autocast
    python benchmarks/sweep.py --halving       # also the halving case through the trainer (~15 min)
    python benchmarks/sweep.py --halving --quick   # the same on the tiny preset, few steps (a smoke test)

Members are B/16-light side networks with their heads (6 x 192), each its own seed, on one frozen tower
(`s4v.models.classifier.SweepClassifier`: the tower steps layer by layer and every member's block that reads
a layer runs on it before the next one). A step is forward, the members' summed losses, backward, one AdamW
step over every member's parameters and zero_grad. "K separate runs" is K times the one-member step of
`Side4VideoClassifier`, measured in the same process on the same tower and batch. FLOPs are counted on the
meta device (forward + backward, a multiply-add = 2) for e14-light at 1 x 8 frames, 224 px, K = 1, 8, 16
(and 2, 4 with --halving).
Prints a markdown table and writes JSON (--out).

`--halving` adds what successive halving saves, through the trainer's step (`benchmarks/sweep_halving.py`):
a single run, static K=4 and K=8 sweeps and a K=8, eta=2 halving sweep trained by `launch/train.py` on CPU
(fp32, batch 2 x 8 frames), their step times at each number of members in the pass, each sweep's cost in
single-run units beside its FLOPs, the counted FLOPs of a K=16, eta=2 halving sweep of the FLOPs preset, and
each measured speed-up beside its bound K(F+m)/(F+Km) (F: the frozen tower's forward, timed alone; m: the
one-member step less F). `--quick`: the tiny preset for everything, 1 timed step, 16 trainer steps, one
thread, the trainer runs side by side: its figures are a smoke test's, not measurements.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from s4v.memory.perf import train_step_flops
from s4v.memory.step import Workload
from s4v.models import create_model
from s4v.models.architectures import PRESETS
from s4v.models.classifier import Side4VideoClassifier, SweepClassifier
from s4v.models.side import run_side_networks

GOAL_K4 = 2.5  # K=4 at least this much cheaper than 4 separate runs (CPU)
GOAL_PER_MEMBER_K8 = 0.35  # cost per member at K=8, in one-member steps
GOAL_FLOPS_K8 = 4.0  # e14-light: 8 separate runs' FLOPs over the 8-member sweep's


def halving_module() -> ModuleType:
    """benchmarks/sweep_halving.py (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "sweep_halving", Path(__file__).resolve().with_name("sweep_halving.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def members_on(model: Side4VideoClassifier, k: int, classes: int, checkpoint: bool | None = None) -> SweepClassifier:
    """`model`'s side network shape k times (seeds 1..k) on its tower; `checkpoint`: side-block recompute
    (None: as `model`)."""
    spec = model.side.spec if checkpoint is None else replace(model.side.spec, checkpoint=checkpoint)
    models = []
    for seed in range(1, k + 1):
        torch.manual_seed(seed)
        models.append(Side4VideoClassifier(model.backbone, spec, classes))
    return SweepClassifier.of(models)


def step_times(model: torch.nn.Module, video: torch.Tensor, labels: torch.Tensor, steps: int, dtype) -> list[float]:
    """Seconds of each of `steps` training steps after one warm-up step."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, foreach=False)
    times = []
    for i in range(steps + 1):
        if video.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(video.device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(video)
        losses = logits.float() if logits.dim() == 3 else logits.float()[None]
        sum(F.cross_entropy(member, labels) for member in losses).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if video.is_cuda:
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return times


def tower_times(backbone: torch.nn.Module, video: torch.Tensor, steps: int, dtype) -> list[float]:
    """Seconds of each of `steps` forwards of the frozen tower alone (F), after one warm-up."""
    times = []
    for i in range(steps + 1):
        if video.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast(video.device.type, dtype=dtype, enabled=dtype is not None):
            run_side_networks([], video, backbone)
        if video.is_cuda:
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return times


def sweep_flops(preset: str, ks: list[int], checkpoint: bool) -> dict[int, float]:
    """Training-step FLOPs of `preset` sweeps at 1 x 8 frames, side blocks recomputed in backward or not;
    the tower is built once on the meta device."""
    meta = torch.device("meta")
    base = create_model(preset, num_classes=174, device=meta)
    size = base.backbone.shape.image_size

    def inputs(device: torch.device) -> tuple[torch.Tensor, ...]:
        return torch.empty(1, 8, 3, size, size, device=device), torch.zeros(1, dtype=torch.long, device=device)

    def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return sum(F.cross_entropy(member, batch[1]) for member in model(batch[0]))

    flops = {}
    for k in ks:
        with meta:
            sweep = members_on(base, k, 174, checkpoint)
        flops[k] = train_step_flops(Workload(f"{preset} x{k}", lambda _, s=sweep: s, inputs, loss))
    return flops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", help="default: cuda where available, cpu with --halving")
    p.add_argument("--members", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--preset", default="b16-light", help="timed members' preset (tests: tiny)")
    p.add_argument("--flops-preset", default="e14-light", help="preset whose sweeps' FLOPs are counted")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration (median)")
    p.add_argument("--halving", action="store_true", help="also the halving case, through the trainer")
    p.add_argument("--train-steps", type=int, default=32, help="--halving: steps of the halving run")
    p.add_argument("--static-steps", type=int, default=8, help="--halving: steps of the single and static runs")
    p.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (0: torch's and the trainer's default)")
    p.add_argument(
        "--quick", action="store_true", help="smoke test: tiny preset, 1 timed step, 16 trainer steps, 1 thread"
    )
    p.add_argument("--out", type=Path, default=Path("outputs/sweep/sweep.json"))
    args = p.parse_args()
    if args.halving and (args.train_steps < 16 or args.train_steps % 8 or args.static_steps < 2):
        p.error(
            "--halving: --train-steps a multiple of 8 from 16, --static-steps from 2 (phases' first steps are left out)"
        )
    args.device = args.device or ("cuda" if torch.cuda.is_available() and not args.halving else "cpu")
    if args.halving and args.device != "cpu":
        p.error(
            "--halving: the trainer runs on CPU (ds_configs/cpu.json); the bound's F and m must come from there too"
        )
    if args.quick:
        args.preset, args.flops_preset, args.steps, args.train_steps, args.static_steps = "tiny", "tiny", 1, 16, 4
        args.threads = 1  # a shared machine's cores: two threads per process wait on each other's time slices
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # A smoke test's trainer runs go on while the rest is measured; timed ones run alone, at the end.
    halving = halving_module() if args.halving else None
    if halving:
        runs = halving.TrainerRuns(args.preset, args.train_steps, args.static_steps, args.threads, args.quick)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    torch.manual_seed(0)
    one = create_model(args.preset, num_classes=174, device=device)
    size = one.backbone.shape.image_size
    video = torch.randn(2, 8, 3, size, size, device=device)
    labels = torch.tensor([3, 7], device=device)
    # The largest sweep first, untimed: a process's first steps pay for growing its heap, which would
    # otherwise fall on whichever configuration runs first. Each sweep is timed right after a one-member
    # run, and compared with it: a shared machine's speed drifts over minutes.
    step_times(members_on(one, max(args.members), 174).to(device), video, labels, 0, dtype)
    rows = []
    for k in args.members:
        single = statistics.median(step_times(one, video, labels, args.steps, dtype))
        sweep = members_on(one, k, 174).to(device)
        t = statistics.median(step_times(sweep, video, labels, args.steps, dtype))
        rows.append({"members": k, "one_member_s": single, "sweep_s": t, "separate_s": k * single})
        rows[-1] |= {"speedup": k * single / t, "per_member": t / (k * single)}
        del sweep
    single = statistics.median(r["one_member_s"] for r in rows)
    tower_s = statistics.median(tower_times(one.backbone, video, args.steps, dtype)) if args.halving else None
    ks = [1, 2, 4, 8, 16] if args.halving else [1, 8, 16]
    flops = {ck: sweep_flops(args.flops_preset, ks, ck) for ck in (True, False)}
    precision = "bf16" if dtype else "fp32"
    print(f"\n{args.preset}, batch 2 x 8 frames, {device.type}, {precision}: one-member step {single:.2f} s (median)\n")
    print("| members K | one-member step (s) | sweep step (s) | K separate runs (s) | speed-up | cost per member |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = [f"{r[key]:.2f}" for key in ("one_member_s", "sweep_s", "separate_s")]
        cells += [f"{r['speedup']:.2f}x", f"{r['per_member']:.3f}"]
        print(f"| {r['members']} | {' | '.join(cells)} |")
    k4 = next((r for r in rows if r["members"] == 4), None)
    if k4:
        print(f"\nspeed-up at K=4: {k4['speedup']:.2f}x (goal >= {GOAL_K4}x)")
    k8 = next((r for r in rows if r["members"] == 8), None)
    if k8:
        print(f"cost per member at K=8: {k8['per_member']:.3f} of one run (goal <= {GOAL_PER_MEMBER_K8})")
    print(f"\n{args.flops_preset}, 1 x 8 frames, counted training-step FLOPs (meta device):\n")
    print("| side checkpointing | members K | sweep TFLOP | K separate runs TFLOP | ratio |")
    print("|---|---:|---:|---:|---:|")
    for ck, counts in flops.items():
        for k, f in counts.items():
            cells = [f"{f / 1e12:.2f}", f"{k * counts[1] / 1e12:.2f}", f"{k * counts[1] / f:.2f}x"]
            print(f"| {'on' if ck else 'off'} | {k} | {' | '.join(cells)} |")
    for ck, counts in flops.items():
        ratio = 8 * counts[1] / counts[8]
        print(f"FLOP ratio at K=8, side checkpointing {'on' if ck else 'off'}: {ratio:.2f}x (goal >= {GOAL_FLOPS_K8}x)")
    doc = {}
    if halving:
        trainer = runs.results()
        ck = PRESETS[args.preset].side_checkpoint
        timed = flops[ck] if args.preset == args.flops_preset else sweep_flops(args.preset, [1, 2, 4, 8], ck)
        report = halving.report(trainer, timed, args.flops_preset, flops, rows, tower_s)
        doc["halving"] = {"trainer": trainer, **report}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc |= {"preset": args.preset, "device": device.type, "one_member_s": single, "rows": rows}
    doc["flops_preset"] = args.flops_preset
    doc["flops"] = {("checkpointed" if ck else "plain"): {str(k): f for k, f in c.items()} for ck, c in flops.items()}
    args.out.write_text(json.dumps(doc, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
