"""Sweeps train K side networks on one frozen pass: each member ends exactly where a run of that member's
config alone ends (same seed, data and steps), on one rank and on two (ZeRO-2), while a member that
diverges is stopped and marked failed without touching the others."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from s4v.train.optimizer import SkippingAdamW

REPO = Path(__file__).resolve().parents[1]
DEEPSPEED = str(Path(sys.executable).with_name("deepspeed"))
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
STEPS = 4  # clipping (configs/synth_tiny.yaml: clip_grad 1.0) and warmup are both in play


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(
    synth: Path, out: Path, ranks: int, *extra: str, script: tuple[str, ...] = ("launch/train.py",)
) -> list[str]:
    """A run of configs/synth_tiny.yaml on `ranks` processes; `script`: the training script and its first
    arguments (a probe of tests/ in place of launch/train.py)."""
    launch = [sys.executable] if ranks == 1 else [DEEPSPEED, "--num_gpus", "2", "--master_port", str(_port())]
    ds = (
        list(extra[extra.index("--ds") : extra.index("--ds") + 2])
        if "--ds" in extra
        else ["--ds", "ds_configs/cpu.json"]
    )
    extra = tuple(e for e in extra if e not in ds)
    return [
        *launch,
        *script,
        *ds,
        "--config",
        "configs/synth_tiny.yaml",
        f"data.root={synth}",
        "data.batch_size=4",
        "data.num_workers=0",
        "optim.batch_size=8",
        "optim.epochs=1",
        "optim.warmup_epochs=0.5",
        f"train.max_steps={STEPS}",
        "train.eval_every_epochs=0",
        "train.max_bad_steps=2",
        "train.progress=false",
        "train.threads_per_rank=1",
        "tracking.enabled=false",
        f"train.out_dir={out}",
        *extra,
    ]


def _train(
    synth: Path, out: Path, ranks: int, *extra: str, script: tuple[str, ...] = ("launch/train.py",)
) -> subprocess.CompletedProcess:
    """`_command` run to its end, which must be a success."""
    cmd = _command(synth, out, ranks, *extra, script=script)
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _trainable(final: Path) -> dict[str, torch.Tensor]:
    return torch.load(final / "trainable.pt", map_location="cpu", weights_only=True)


def _assert_equal(sweep_final: Path, alone_final: Path) -> None:
    ours, alone = _trainable(sweep_final), _trainable(alone_final)
    assert ours.keys() == alone.keys()
    differ = [k for k in ours if not torch.equal(ours[k], alone[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


# Members as dotted overrides; their names are what s4v.config.resolve_members derives from them.
LR, WIDTH, DIVERGING = (
    ("optim.lr", 3.0e-3, "lr=0.003"),
    ("model.side_dim", 128, "side_dim=128"),
    ("optim.lr", 1e12, None),
)


def _members(*members: tuple[str, object, str | None]) -> str:
    return "sweep.members=[" + ", ".join(f"{{{key}: {value!r}}}" for key, value, _ in members) + "]"


@pytest.mark.parametrize("ranks", [1, 2])
def test_each_member_equals_its_run_alone(synth: Path, tmp_path: Path, ranks: int) -> None:
    ds = [] if ranks == 1 else ["ds.zero_optimization.stage=2"]
    members = (LR, WIDTH, DIVERGING) if ranks == 1 else (LR, WIDTH)
    sweep = tmp_path / "sweep"
    db = tmp_path / "mlflow.db"
    tracking = (
        [] if ranks == 2 else ["tracking.enabled=true", f"tracking.uri=sqlite:///{db}", "tracking.system_metrics=false"]
    )
    r = _train(synth, sweep, ranks, _members(*members), *ds, *tracking)
    for key, value, name in members:
        if name is None:
            continue
        alone = tmp_path / name
        _train(synth, alone, ranks, f"{key}={value}", *ds)
        _assert_equal(sweep / "members" / name / "final", alone / "final")
        config = (sweep / "members" / name / "final" / "config.yaml").read_text()
        assert "sweep:\n  grid: {}\n  members: []" in config  # a member's export is a plain run's
    report = json.loads((sweep / "sweep.json").read_text())
    assert [m["name"] for m in report["members"]][: len(members)] == [n or "lr=1e+12" for _, _, n in members]
    if ranks == 1:  # the lr 1e12 member: stopped after train.max_bad_steps, reported, not exported
        failed = report["members"][2]
        assert failed["failed"] and failed["export"] is None and "consecutive steps" in failed["failure"]
        assert failed["left"]["why"] == "failed" and failed["left"]["step"] == 3  # it left the pass at once
        assert not (sweep / "members" / "lr=1e+12").exists()
        assert "[s4v] member lr=1e+12 failed:" in r.stdout
        rows = [json.loads(line) for line in (sweep / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == STEPS and all(row["loss/lr=0.003"] == row["loss/lr=0.003"] for row in rows)
        assert [row["members_in_pass"] for row in rows] == [3, 3, 3, 2]
        _assert_children(db, ["lr=0.003", "side_dim=128", "lr=1e+12"])
        _assert_resume_equal(synth, tmp_path / "resumed", sweep, _members(*members))
        _assert_sweep_eval(sweep, "lr=0.003")
        _assert_eval_tracked_per_member(db, sweep)


def _assert_resume_equal(synth: Path, out: Path, uninterrupted: Path, members: str) -> None:
    """A sweep stopped at step 2 (the lr 1e12 member one bad step in: it fails at step 3 after the resume, as
    in the whole run) and resumed ends where the whole run does."""
    _train(synth, out, 1, members, "train.max_steps=2")
    _train(synth, out, 1, members, "--resume")
    for name in ("lr=0.003", "side_dim=128"):
        _assert_equal(out / "members" / name / "final", uninterrupted / "members" / name / "final")
    failed = json.loads((out / "sweep.json").read_text())["members"][2]
    assert failed["failed"] and failed["failure"].endswith("up to step 3")


def _assert_children(db: Path, names: list[str]) -> None:
    """One parent MLflow run, a nested child per member with its overrides and its own step metrics."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("s4v-demo").experiment_id])
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and sorted(children) == sorted(names)
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children.values())
    assert children["lr=0.003"].data.params["override.optim.lr"] == "0.003"
    assert [m.step for m in client.get_metric_history(children["lr=0.003"].info.run_id, "train/loss")] == [1, 2, 3, 4]
    assert children["lr=1e+12"].info.status == "FAILED" and children["lr=0.003"].info.status == "FINISHED"


def _assert_eval_tracked_per_member(db: Path, sweep: Path) -> None:
    """A member's export names its own MLflow run, and launch/eval.py (on the sweep root and on the member's
    final/) logs that member's score there, never into the parent run."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("s4v-demo").experiment_id])
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert not [k for k in parent.data.metrics if k.startswith("eval_")]
    for name, evaluations in (("lr=0.003", 2), ("side_dim=128", 1)):  # root and own final/; root only
        meta = json.loads((sweep / "members" / name / "final" / "meta.json").read_text())
        assert meta["mlflow_run_id"] == children[name].info.run_id and "members" not in meta
        history = client.get_metric_history(children[name].info.run_id, "eval_1x1/top1")
        assert len(history) == evaluations


def _assert_sweep_eval(sweep: Path, name: str) -> None:
    """launch/eval.py on the sweep root (all members on one pass) scores a member as its own export does."""
    for checkpoint, out in ((sweep, sweep / "eval"), (sweep / "members" / name / "final", sweep / "alone_eval")):
        cmd = [sys.executable, "launch/eval.py", "--checkpoint", str(checkpoint), "--out", str(out), "--dtype", "fp32"]
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=ENV, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    together = json.loads((sweep / "eval" / name / "eval.json").read_text())
    alone = json.loads((sweep / "alone_eval" / "eval.json").read_text())
    assert together["top1"] == alone["top1"] and together["confusion_matrix"] == alone["confusion_matrix"]
    report = json.loads((sweep / "eval" / "sweep.json").read_text())
    scored = {m["name"]: m["best"] for m in report["members"]}
    assert scored["lr=0.003"] == together["top1"] and scored["lr=1e+12"] is None  # the failed one: no export


def test_a_sweep_that_changes_the_shared_pass_is_refused(synth: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "launch/train.py", f"data.root={synth}", "sweep.grid.data.num_frames=[8,16]"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 2
    from s4v.config import SWEEPABLE

    assert r.stderr.strip().splitlines() == [
        "error: sweep: data.num_frames is shared by every member (the frozen pass, its data and schedule length "
        f"are one); a member may set only {', '.join(SWEEPABLE)}"
    ]


def _groups(clip: float) -> tuple[list[torch.nn.Parameter], SkippingAdamW]:
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    groups = [{"params": [p], "lr": 0.1, "clip_grad": clip, "member": k} for k, p in enumerate(params)]
    return params, SkippingAdamW(groups, lr=0.1, weight_decay=0.1, foreach=False)


def test_a_members_non_finite_gradient_leaves_only_that_member_alone() -> None:
    (a, b), opt = _groups(0.0)
    a.grad, b.grad = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, float("inf")])
    opt.step()
    assert opt.take_bad() == {1} and not opt.overflow
    assert torch.equal(b.detach(), torch.ones(2)) and b not in opt.state
    assert (a.detach() < 1).all() and opt.state[a]["step"] == 1
    opt.refuse({0})  # the trainer refuses member 0 (its loss was not finite)
    b.grad = torch.tensor([1.0, 1.0])
    before = a.detach().clone()
    opt.step()
    assert torch.equal(a.detach(), before) and opt.state[a]["step"] == 1 and opt.state[b]["step"] == 1
    assert opt.take_bad() == set()  # taken once: the last step's finding is not reported again
    opt.refuse({0, 1})
    opt.step()
    assert opt.overflow  # every member refused: DeepSpeed then leaves the schedule alone


def test_each_member_is_clipped_by_its_own_norm() -> None:
    (a, b), opt = _groups(1.0)
    ga, gb = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.3, 0.4])  # norms 5 (clipped) and 0.5 (not)
    a.grad, b.grad = ga.clone(), gb.clone()
    opt.step()
    ref = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    for p, g in zip(ref, (ga, gb), strict=True):
        p.grad = g.clone()
        torch.nn.utils.clip_grad_norm_([p], 1.0)  # each alone: a norm across members would clip b too
    torch.optim.AdamW(ref, lr=0.1, weight_decay=0.1, foreach=False).step()
    torch.testing.assert_close(a.detach(), ref[0].detach(), rtol=0, atol=1e-7)
    torch.testing.assert_close(b.detach(), ref[1].detach(), rtol=0, atol=0)


def test_the_table9_sweep_builds_every_row_on_one_tower() -> None:
    from s4v.config import load_config, resolve_members
    from s4v.train.build import build_model

    cfg = load_config(REPO / "configs/ssv2_vitb_table9_sweep.yaml", ["model.checkpoint=null"])
    members = [m.cfg for m in resolve_members(cfg)]
    model = build_model(cfg, 174, torch.device("meta"), members=members)
    assert len(model.members) == 10 and len({id(m.side) for m in model.members}) == 10
    shapes = [(len(m.side.blocks), m.head.fc.in_features) for m in model.members]
    assert shapes == [(12, 320)] * 5 + [(4, 320), (6, 320), (12, 128), (12, 192), (12, 256)]
    assert [m.side.options.temporal for m in model.members][:2] == ["conv", "attention"]


def test_a_diverging_member_in_bf16_leaves_the_others_stepping(synth: Path, tmp_path: Path) -> None:
    """bf16 at ZeRO-1 (ds_configs/vite.json): DeepSpeed's overflow check sees every member's gradients at
    once; a diverging member's non-finite gradients are zeroed before it (and noted), so the others step."""
    bf16 = ["--ds", "ds_configs/vite.json"]
    sweep, alone = tmp_path / "sweep", tmp_path / "alone"
    r = _train(synth, sweep, 1, _members(LR, DIVERGING), *bf16)
    assert "[s4v] member lr=1e+12 failed:" in r.stdout and "member lr=0.003: step" not in r.stdout
    _train(synth, alone, 1, f"{LR[0]}={LR[1]}", *bf16)
    _assert_equal(sweep / "members" / "lr=0.003" / "final", alone / "final")
