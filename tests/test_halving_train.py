"""Successive halving in training (`sweep.halving`): the members a rung culls leave the shared pass, and the
survivor ends bit for bit where the same member of the static sweep (same held-out carve) ends, on one rank and
on two with ZeRO-2; a run stopped right after a rung and resumed on another world size keeps the decision."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_sweep_train import ENV, REPO, _assert_equal, _train

GRID = "sweep.grid.optim.lr=[1.0e-3,3.0e-3,1.0e-2,3.0e-2]"
NAMES = ["lr=0.001", "lr=0.003", "lr=0.01", "lr=0.03"]
# 40 training videos, 12 of them held out (3 per class): 28 left, 3 steps of 8 an epoch, 6 in two epochs;
# rungs after epoch 0.5 and 1 (steps 2 and 3) take 4 members to 2, then to 1.
RUN = ("data.heldout_fraction=0.25", "optim.epochs=2", "train.max_steps=6")
HALVING = ("sweep.halving.eta=2", "sweep.halving.rungs=[0.5,1.0]")


def _report(out: Path) -> dict:
    return json.loads((out / "sweep.json").read_text())


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _static_and_halving(synth: Path, root: Path, ranks: int) -> tuple[Path, Path, str]:
    ds = [] if ranks == 1 else ["ds.zero_optimization.stage=2"]
    static, halving = root / "static", root / "halving"
    _train(synth, static, ranks, GRID, *RUN, *ds)
    return static, halving, _train(synth, halving, ranks, GRID, *RUN, *HALVING, *ds).stdout


@pytest.mark.parametrize("ranks", [1, 2])
def test_the_survivor_ends_where_the_static_sweep_member_ends(
    synth: Path, tmp_path: Path, ranks: int, request: pytest.FixtureRequest
) -> None:
    if ranks == 1:
        static, halving, stdout = request.getfixturevalue("one_rank_halving")
    else:
        static, halving, stdout = _static_and_halving(synth, tmp_path, ranks)
    decisions = _report(halving)["halving"]["decisions"]
    assert [(d["step"], len(d["live"]), len(d["kept"])) for d in decisions] == [(2, 4, 2), (3, 2, 1)]
    (survivor,) = [NAMES[k] for k in decisions[-1]["kept"]]
    _assert_equal(halving / "members" / survivor / "final", static / "members" / survivor / "final")
    assert stdout.count("[s4v] halving rung") == 2
    # From the step after a rung the culled members are out of the model: the pass has 2, then 1 member ...
    assert [row["members_in_pass"] for row in _rows(halving)] == [4, 4, 2, 1, 1, 1]
    # ... and of the engine: the last checkpoint holds the survivor's parameters alone.
    state = torch.load(halving / "checkpoints" / "step_00000006" / "elastic.pt", weights_only=False)
    assert {name.split(".")[1] for name in state["master"]} == {"0"}
    members = {m["name"]: m for m in _report(halving)["members"]}
    for k in decisions[0]["culled"] + decisions[1]["culled"]:
        left = members[NAMES[k]]["left"]
        meta = json.loads((halving / "members" / NAMES[k] / "final" / "meta.json").read_text())
        assert left["why"] == "culled" and meta["culled"]["rung"] == left["rung"] and meta["step"] == left["step"]
    assert "Successive halving (eta 2) on heldout top1" in (halving / "sweep.md").read_text()


def test_a_stop_right_after_a_rung_resumes_on_another_world_size_with_its_decision(synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [
        sys.executable, "launch/train.py", "--ds", "ds_configs/cpu.json", "--config", "configs/synth_tiny.yaml",
        f"data.root={synth}", "data.batch_size=8", "data.num_workers=0", "optim.batch_size=8",
        "optim.warmup_epochs=0.5", "train.eval_every_epochs=0", "train.progress=false", "tracking.enabled=false",
        "train.threads_per_rank=1", f"train.out_dir={out}", GRID, *RUN, *HALVING,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, log = time.monotonic() + 300, []
    for line in proc.stdout:  # the signal lands while the run goes on after rung 1
        log.append(line)
        if line.startswith("[s4v] halving rung 1"):
            os.kill(proc.pid, signal.SIGTERM)
            break
        assert time.monotonic() < deadline, "".join(log)
    log += proc.stdout.readlines()
    assert proc.wait(timeout=120) != 0, "".join(log)
    stopped = int((out / "checkpoints" / "latest").read_text().removeprefix("step_"))
    assert 2 <= stopped < 6, "".join(log)
    meta = json.loads((out / "checkpoints" / f"step_{stopped:08d}" / "meta.json").read_text())
    assert [d["rung"] for d in meta["halving"]["decisions"]] == ([0] if stopped < 3 else [0, 1])
    r = _train(synth, out, 2, GRID, *RUN, *HALVING, "data.batch_size=4", "--resume")
    assert "[s4v] halving rung 1" not in r.stdout  # decided once, before the stop
    decisions = _report(out)["halving"]["decisions"]
    first = meta["halving"]["decisions"][0]
    assert decisions[0] == first and [d["rung"] for d in decisions] == [0, 1]
    assert set(decisions[1]["live"]) == set(first["kept"])
    culled_first = {NAMES[k] for k in first["culled"]}
    assert all((out / "members" / n / "final" / "trainable.pt").is_file() for n in NAMES)
    assert {m["name"] for m in _report(out)["members"] if (m["left"] or {}).get("rung") == 0} == culled_first
