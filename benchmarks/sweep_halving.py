"""The halving case of `benchmarks/sweep.py` (`--halving`): sweeps timed through the trainer, and their cost.

`trainer_runs` trains, with `launch/train.py` (one rank, `ds_configs/cpu.json`, fp32) on a synthetic set it
writes, a single run, static K=4 and K=8 sweeps over `optim.lr`, and a K=8 sweep with `sweep.halving.eta=2` and
the default rungs (after 1/8, 1/4 and 1/2 of the run); each run's step times come from its `metrics.jsonl`.
A phase's step time is the median `step_s` over its steps with the same `members_in_pass`, its first step
left out (the run's warm-up, or the step after a rung). A rung's overhead (the selection evaluation, the
rebuild of model and engine, the checkpoint) is the `step_s` of the step after it less that median: the
trainer's step clock runs through them. A sweep's cost in single-run units is the sum over its phases of
steps x step time, plus the rungs' overheads, over the single run's steps x step time.

`halving_flops_units` is the same sum with counted FLOPs per step and the phases of `default_fractions`, and
`bound` is the most K members on one frozen pass can save over K runs: K (F + m) / (F + K m), with a tower
step F and a member step m.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from s4v.models.architectures import PRESETS
from s4v.train.halving import default_fractions

REPO = Path(__file__).resolve().parents[1]
ETA = 2
LRS = [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2]  # the K=8 grid; K=4 is its first four
GOAL_UNITS = 1.6  # K=8, eta=2 halving sweep through the trainer, in single-run units (CPU)
GOAL_VS_SEPARATE = 5.0  # ... at least this much cheaper than 8 separate runs
GOAL_FLOPS_UNITS = 2.0  # K=16, eta=2 at the FLOPs preset (e14-light), in single-run units
HELDOUT = 0.1  # one video of each class of the synthetic set: the selection split a rung evaluates


def phases(members: int, eta: int) -> list[tuple[int, float]]:
    """(members in pass, share of the run) of a halving sweep with the default rungs, first phase first."""
    bounds = [0.0, *default_fractions(members, eta), 1.0]  # floor(floor(n / eta) / eta) = floor(n / eta^2)
    return [(members // eta**i, b - a) for i, (a, b) in enumerate(itertools.pairwise(bounds))]


def halving_flops_units(flops: dict[int, float], members: int, eta: int) -> float:
    """FLOPs of a halving sweep over those of one run of the same length; `flops`: per step, by K."""
    return sum(share * flops[k] for k, share in phases(members, eta)) / flops[1]


def bound(k: int, tower: float, member: float) -> float:
    """How much cheaper K members on one frozen pass can be than K runs: K (F + m) / (F + K m)."""
    return k * (tower + member) / (tower + k * member)


def _command(
    data: Path, out: Path, preset: str, steps: int, lrs: list[float], halving: bool, threads: int
) -> list[str]:
    """`launch/train.py` for one run: `lrs` (one per member), the default rungs at eta 2 if `halving`."""
    overrides = [
        f"data.root={data}", f"model.preset={preset}", f"data.image_size={PRESETS[preset].image_size}",
        "data.batch_size=2", "optim.batch_size=2", f"data.heldout_fraction={HELDOUT}", "optim.epochs=1000",
        f"train.max_steps={steps}", "train.eval_every_epochs=0", "train.progress=false", "tracking.enabled=false",
        f"train.threads_per_rank={threads}", f"train.out_dir={out}",
    ]  # fmt: skip
    if len(lrs) > 1:
        overrides.append(f"sweep.grid.optim.lr=[{','.join(map(str, lrs))}]")
    if halving:
        overrides.append(f"sweep.halving.eta={ETA}")
    cmd = [sys.executable, "launch/train.py", "--ds", "ds_configs/cpu.json", "--config", "configs/synth_tiny.yaml"]
    return [*cmd, *overrides]


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _phases(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run cut where `members_in_pass` changes: each phase's steps, median step and first step."""
    out: list[dict[str, Any]] = []
    for row in rows:
        k = row.get("members_in_pass", 1)  # a plain run's rows have no such key
        if not out or out[-1]["members"] != k:
            out.append({"members": k, "first_step": row["step"], "times": [], "waits": []})
        out[-1]["times"].append(row["step_s"])
        out[-1]["waits"].append(row["data_wait_s"])
    for p in out:
        times = p.pop("times")
        p |= {"steps": len(times), "first_s": times[0], "step_s": statistics.median(times[1:] or times)}
        p["data_wait_s"] = statistics.median(p.pop("waits"))
    return out


class TrainerRuns:
    """A single run, static K=4 and K=8 sweeps (`static_steps` each) and the K=8, eta=2 halving sweep (`steps`)
    through the trainer, `threads` intra-op threads each (0: the trainer's default, every core). Timed runs go
    one after another in `results`; `parallel` (a smoke test) starts them all at once, here."""

    def __init__(self, preset: str, steps: int, static_steps: int, threads: int = 0, parallel: bool = False) -> None:
        self.preset, self.steps, self.static_steps = preset, steps, static_steps
        self.tmp = tempfile.TemporaryDirectory()
        root = Path(self.tmp.name)
        synth = [sys.executable, "-m", "s4v.cli", "synth", "--out", str(root / "synth"), "--classes", "4"]
        subprocess.run([*synth, "--videos-per-class", "16", "--frames", "8"], cwd=REPO, check=True, capture_output=True)
        members = {"single": LRS[:1], "static_4": LRS[:4], "static_8": LRS, "halving_8": LRS}
        self.commands = {
            name: _command(root / "synth", root / name, preset, steps if name == "halving_8" else static_steps, lrs,
                           name == "halving_8", threads)
            for name, lrs in members.items()
        }  # fmt: skip
        self.procs = {name: self._start(cmd) for name, cmd in self.commands.items()} if parallel else {}

    @staticmethod
    def _start(cmd: list[str]) -> subprocess.Popen:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def results(self) -> dict[str, Any]:
        """Each run to its end, then their step times and the sweeps' costs; totals are for `steps` steps."""
        with self.tmp as tmp:
            for name, cmd in self.commands.items():
                proc = self.procs.get(name) or self._start(cmd)
                log = proc.communicate()[0]
                if proc.returncode:
                    raise RuntimeError(f"{name} run failed:\n{log[-4000:]}")
            rows = {name: _rows(Path(tmp) / name) for name in self.commands}
            decisions = json.loads((Path(tmp) / "halving_8" / "sweep.json").read_text())["halving"]["decisions"]
        return _costs(self.preset, self.steps, self.static_steps, rows, decisions)


def _costs(
    preset: str, steps: int, static_steps: int, rows: dict[str, list[dict[str, Any]]], decisions: list[dict[str, Any]]
) -> dict[str, Any]:
    """The runs' phases, the rungs' overheads and each sweep's cost over `steps` steps."""
    doc: dict[str, Any] = {"preset": preset, "steps": steps, "static_steps": static_steps, "eta": ETA}
    doc["phases"] = {name: _phases(r) for name, r in rows.items()}
    halving = doc["phases"]["halving_8"]
    rungs = []
    for d, after in zip(decisions, halving[1:], strict=True):
        overhead = after["first_s"] - after["step_s"]
        rungs.append({"step": d["step"], "ranked": len(d["live"]), "kept": len(d["kept"]), "overhead_s": overhead})
    doc["rungs"] = rungs
    # A run of one phase at its median step, `steps` long; the halving run's phases as they went.
    single, *static = (steps * doc["phases"][name][0]["step_s"] for name in ("single", "static_4", "static_8"))
    totals = dict(zip(("static_4", "static_8"), static, strict=True))
    steps_only = sum(p["steps"] * p["step_s"] for p in halving)
    totals["halving_8"] = steps_only + sum(r["overhead_s"] for r in rungs)
    doc["single_total_s"], doc["totals_s"] = single, totals
    doc["halving_steps_only_units"] = steps_only / single
    doc["units"] = {name: t / single for name, t in totals.items()}
    units = doc["units"]["halving_8"]
    doc["halving_vs_separate"] = 8 / units
    doc["halving_vs_static_8"] = totals["static_8"] / totals["halving_8"]
    doc["static_speedup"] = {k: k / doc["units"][f"static_{k}"] for k in (4, 8)}
    return doc


def report(
    trainer: dict[str, Any],
    timed_flops: dict[int, float],
    flops_preset: str,
    flops: dict[bool, dict[int, float]],
    rows: list[dict[str, Any]],
    tower_s: float,
) -> dict[str, Any]:
    """Print the halving case's tables and return their figures. `timed_flops`: per-step FLOPs of the timed
    preset by K; `flops`: the FLOPs preset's, by side checkpointing; `rows`: the model-alone table's rows;
    `tower_s`: the frozen tower's forward timed alone (F; a member's step m is the one-member step less F)."""
    _print_steps(trainer)
    one = statistics.median(r["one_member_s"] for r in rows)
    member = one - tower_s
    ideal = sum(share * (tower_s + k * member) for k, share in phases(8, ETA)) / one
    _print_cost(trainer, timed_flops, tower_s, member, ideal)
    print("\nCounted training-step FLOPs of halving sweeps (default rungs), as in the FLOPs table:\n")
    print("| FLOPs of | members K, eta | phases (K: share of run) | single-run units | K separate runs / sweep |")
    print("|---|---:|---|---:|---:|")
    forms = {f"{flops_preset}, side checkpointing {'on' if ck else 'off'}": (16, f) for ck, f in flops.items()}
    out_flops = {}
    for label, (k, f) in {f"{trainer['preset']} (timed)": (8, timed_flops), **forms}.items():
        u = halving_flops_units(f, k, ETA)
        shares = ", ".join(f"{n}: {s:g}" for n, s in phases(k, ETA))
        print(f"| {label} | {k}, {ETA} | {shares} | {u:.3f} | {k / u:.2f}x |")
        out_flops[label] = {"members": k, "units": u}
    print(f"goal at {flops_preset}, K=16, eta 2: <= {GOAL_FLOPS_UNITS} single-run units")
    # The trainer's one-member step is longer than the model's alone; counted as shared, that extra time
    # raises the bound its sweeps are held to.
    extra = trainer["single_total_s"] / trainer["steps"] - one
    print(f"\nBound K(F+m)/(F+Km), F = {tower_s:.3f} s (tower forward), m = {member:.3f} s (model alone); the ", end="")
    print(f"trainer's one-member step takes {extra:.3f} s more, shared by its members in the last column:\n")
    print("| members K | figure | speed-up | bound | of bound | bound, F + trainer's extra | of that bound |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    figures = [(r["members"], "model alone", r["speedup"], 0.0) for r in rows]
    figures += [(int(k), "through the trainer", s, extra) for k, s in trainer["static_speedup"].items()]
    bounds = []
    for k, figure, speedup, shared in figures:
        b, b_shared = bound(k, tower_s, member), bound(k, tower_s + shared, member)
        cells = f"{speedup:.2f}x | {b:.2f}x | {speedup / b:.0%} | {b_shared:.2f}x | {speedup / b_shared:.0%}"
        print(f"| {k} | {figure} | {cells} |")
        bounds.append({"members": k, "figure": figure, "speedup": speedup, "bound": b, "bound_shared": b_shared})
    out = {"tower_s": tower_s, "member_s": member, "trainer_extra_s": extra, "ideal_units": ideal}
    return out | {"flops_units": out_flops, "bounds": bounds}


def _print_steps(trainer: dict[str, Any]) -> None:
    """Step times by run and members in the pass; the rungs' overheads."""
    single = trainer["single_total_s"] / trainer["steps"]
    print(
        f"\n{trainer['preset']} through the trainer (launch/train.py, 1 rank, fp32, batch 2 x 8 frames); static ",
        end="",
    )
    print(f"runs {trainer['static_steps']} steps, halving {trainer['steps']} steps, eta {trainer['eta']}:\n")
    print("| run | members in pass | steps | step (s), median | first step (s) | data wait (s), median |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, cut in trainer["phases"].items():
        for p in cut:
            cells = [f"{p[key]:.3f}" for key in ("step_s", "first_s", "data_wait_s")]
            print(f"| {name} | {p['members']} | {p['steps']} | {' | '.join(cells)} |")
    print("\n| rung | after step | members ranked -> kept | overhead (s) | in single-run steps |")
    print("|---:|---:|---|---:|---:|")
    for i, r in enumerate(trainer["rungs"], 1):
        cells = f"{r['ranked']} -> {r['kept']} | {r['overhead_s']:.2f} | {r['overhead_s'] / single:.2f}"
        print(f"| {i} | {r['step']} | {cells} |")


def _print_cost(trainer: dict[str, Any], flops: dict[int, float], tower: float, member: float, ideal: float) -> None:
    """Each sweep's cost in single-run units, measured, modelled from F and m, and counted in FLOPs."""
    t, units, steps = trainer["totals_s"], trainer["units"], trainer["steps"]
    halving_flops = halving_flops_units(flops, 8, ETA)
    steps_only = trainer["halving_steps_only_units"]
    table = [
        ("single run", trainer["single_total_s"], 1.0, 1, 1.0, 1.0),
        *((f"static K={k}", t[f"static_{k}"], units[f"static_{k}"], k, (tower + k * member) / (tower + member),
           flops[k] / flops[1]) for k in (4, 8)),
        ("halving K=8, eta 2", t["halving_8"], units["halving_8"], 8, ideal, halving_flops),
        ("halving, rungs' overheads left out", steps_only * trainer["single_total_s"], steps_only, 8, ideal,
         halving_flops),
    ]  # fmt: skip
    print(f"\nCost of {steps} steps in single-run units; F, m model: a step with K members takes F + K m:\n")
    print(
        "| sweep | total (s) | single-run units | K separate runs / sweep | static K=8 / sweep | F, m model | FLOPs |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, total, u, k, model, counted in table:
        cells = [f"{total:.1f}", f"{u:.3f}", f"{k / u:.2f}x", f"{t['static_8'] / total:.2f}x", f"{model:.3f}"]
        print(f"| {name} | {' | '.join(cells)} | {counted:.3f} |")
    h = units["halving_8"]
    print(
        f"\nhalving K=8, eta 2: {h:.3f} single-run units (goal <= {GOAL_UNITS}), {8 / h:.2f}x cheaper than 8 ", end=""
    )
    print(f"separate runs (goal >= {GOAL_VS_SEPARATE}x), {trainer['halving_vs_static_8']:.2f}x than the static sweep")
