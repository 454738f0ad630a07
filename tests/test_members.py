"""A member is one object: its saved state round-trips by name, checkpoints written before members were
objects still resume, and what a member has counted (skipped steps) and the run's wall time go on across a
resume instead of restarting."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from s4v.config import Config, MemberSpec, TrainConfig
from s4v.train.layout import RunLayout
from s4v.train.members import MemberSet

REPO = Path(__file__).resolve().parents[1]

# meta["members"] exactly as checkpoints of the first sweep release wrote it (a 3-member lr sweep, the
# last member failed after 3 bad steps, the second one bad step in).
OLD_META = {
    "names": ["lr=0.001", "lr=0.01", "lr=1e+12"],
    "failures": {"lr=1e+12": "non-finite loss or gradient at 3 consecutive steps, up to step 4"},
    "history": {
        "lr=0.001": [{"epoch": 1, "step": 6, "top1": 0.5, "top5": 1.0, "mean_class_accuracy": 0.5}],
        "lr=0.01": [{"epoch": 1, "step": 6, "top1": 0.25, "top5": 1.0, "mean_class_accuracy": 0.25}],
        "lr=1e+12": [],
    },
    "mlflow_run_ids": ["aaa", "bbb", "ccc"],
    "bad_in_a_row": [0, 1, 3],
}


def _members(tmp_path: Path, names: list[str], sweep: bool) -> MemberSet:
    cfg = Config(train=TrainConfig(out_dir=str(tmp_path)))
    specs = [MemberSpec(n, {}, cfg) for n in names]
    return MemberSet(RunLayout(tmp_path, sweep), specs, [torch.nn.Linear(2, 2) for _ in names])


def test_a_member_set_reads_the_first_meta_format_by_name(tmp_path: Path) -> None:
    members = _members(tmp_path, OLD_META["names"], sweep=True)
    members.load_state_dict(json.loads(json.dumps(OLD_META)))
    assert [m.state.bad_in_a_row for m in members] == [0, 1, 3]
    assert [m.state.mlflow_run_id for m in members] == ["aaa", "bbb", "ccc"]
    assert members.failed == {2} and members.live == [0, 1]
    assert members[2].state.failure == OLD_META["failures"]["lr=1e+12"]
    assert members[1].state.history[0]["top1"] == 0.25
    assert [m.state.skipped_steps for m in members] == [0, 0, 0]  # not saved then: restarts at 0


def test_member_states_round_trip_through_a_checkpoint_meta(tmp_path: Path) -> None:
    names = ["lr=0.001", "lr=0.01"]
    members = _members(tmp_path, names, sweep=True)
    members[1].state.bad_step()
    members[1].state.bad_step()
    members[1].fail("why")
    members[0].state.history.append({"epoch": 1, "step": 2, "top1": 0.75})
    saved = json.loads(json.dumps(members.state_dict()))  # as meta.json holds it
    restored = _members(tmp_path, list(reversed(names)), sweep=True)  # by name, not by position
    restored.load_state_dict(saved)
    assert restored[0].state == members[1].state and restored[1].state == members[0].state
    assert restored[0].state.skipped_steps == 2 and restored.failed == {0}


@pytest.mark.parametrize("sweep", [False, True])
def test_the_layout_alone_places_a_members_files(tmp_path: Path, sweep: bool) -> None:
    member = _members(tmp_path, ["lr=0.01"], sweep)[0]
    assert member.final_dir == (tmp_path / "members" / "lr=0.01" / "final" if sweep else tmp_path / "final")
    assert member.label == ("member lr=0.01" if sweep else "")
    assert member.export_extra == ({"sweep_member": "lr=0.01", "sweep_overrides": {}} if sweep else {})


def _train(synth: Path, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [
        sys.executable, "launch/train.py", "--ds", "ds_configs/cpu.json", "--config", "configs/synth_tiny.yaml",
        f"data.root={synth}", "data.batch_size=4", "data.num_workers=0", "optim.batch_size=4", "optim.epochs=1",
        "optim.warmup_epochs=0", "train.eval_every_epochs=0", "train.progress=false", "train.threads_per_rank=1",
        f"train.out_dir={out}", *extra,
    ]  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r, time.perf_counter() - t0


def _meta(out: Path, step: int) -> dict:
    return json.loads((out / "checkpoints" / f"step_{step:08d}" / "meta.json").read_text())


def test_a_checkpoint_with_the_first_meta_format_resumes(synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _train(synth, out, "train.max_steps=2", "tracking.enabled=false")
    path = out / "checkpoints" / "step_00000002" / "meta.json"
    meta = json.loads(path.read_text())
    meta.pop("wall_s")
    meta["members"] = {
        "names": ["base"], "failures": {}, "history": {"base": []}, "mlflow_run_ids": [None], "bad_in_a_row": [0],
    }  # fmt: skip
    path.write_text(json.dumps(meta))
    r, _ = _train(synth, out, "train.max_steps=3", "tracking.enabled=false", "--resume")
    assert "resumed from" in r.stdout
    assert json.loads((out / "result.json").read_text())["steps"] == 3
    assert _meta(out, 3)["members"]["states"]["base"]["bad_in_a_row"] == 0


def test_skipped_steps_and_wall_time_go_on_across_a_resume(synth: Path, tmp_path: Path) -> None:
    """lr 1e12: every step after the first has a non-finite loss and is skipped (max_bad_steps is high enough
    that the run goes on); the count in the checkpoint and in MLflow continues after the resume, and the
    resumed run's wall time adds the first segment's."""
    import mlflow

    out, db = tmp_path / "run", tmp_path / "mlflow.db"
    args = ["optim.lr=1e12", "train.max_bad_steps=100", "tracking.enabled=true", f"tracking.uri=sqlite:///{db}"]
    args += ["tracking.system_metrics=false", "train.log_every_steps=1"]
    _train(synth, out, "train.max_steps=3", *args)
    first = _meta(out, 3)
    skipped = first["members"]["states"]["base"]["skipped_steps"]
    assert skipped >= 1
    r, elapsed = _train(synth, out, "train.max_steps=5", *args, "--resume")
    assert _meta(out, 5)["members"]["states"]["base"]["skipped_steps"] == skipped + 2
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    history = client.get_metric_history(first["mlflow_run_id"], "train/skipped_steps")
    assert [(m.step, m.value) for m in history if m.step > 3] == [(4, skipped + 1), (5, skipped + 2)]
    wall = json.loads((out / "result.json").read_text())["wall_s"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    resumed_steps = sum(row["step_s"] for row in rows if row["step"] > 3)
    assert first["wall_s"] + resumed_steps <= wall <= first["wall_s"] + elapsed
