"""Successive halving in training (`sweep.halving`): the members a rung culls leave the shared pass, and the
survivor ends bit for bit where the same member of the static sweep (same held-out carve) ends, on one rank and
on two with ZeRO-2; a run stopped right after a rung and resumed on another world size keeps the decision."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch
from test_sweep_train import ENV, REPO, _assert_equal, _command, _train

from s4v.core.preemption import EXIT_STOPPED

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


def _probed(out: Path) -> tuple[dict[int, Counter], dict[int, Counter], dict[int, int]]:
    """What tests/halving_probe.py recorded: side-network forwards by step and member (training, selection) and
    each step's peak bytes."""
    probe = json.loads((out / "probe.json").read_text())
    train: dict[int, Counter] = defaultdict(Counter)
    select: dict[int, Counter] = defaultdict(Counter)
    for row in probe["calls"]:
        (train if row["training"] else select)[row["step"]][row["member"]] += row["calls"]
    return train, select, {int(step): peak for step, peak in probe["peak_bytes"].items()}


def _static_and_halving(synth: Path, root: Path, ranks: int) -> tuple[Path, Path, str]:
    """The static sweep and the halving one, run by tests/halving_probe.py (probe.json)."""
    ds = [] if ranks == 1 else ["ds.zero_optimization.stage=2"]
    static, halving = root / "static", root / "halving"
    _train(synth, static, ranks, GRID, *RUN, *ds)
    probe = ("tests/halving_probe.py", str(root / "probe.json"))
    stdout = _train(synth, halving, ranks, GRID, *RUN, *HALVING, *ds, script=probe).stdout
    (root / "probe.json").rename(halving / "probe.json")
    return static, halving, stdout


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
    rows = _rows(halving)
    assert [row["members_in_pass"] for row in rows] == [4, 4, 2, 1, 1, 1]
    # ... their side networks are never called again: each step trains the live members, each as often as the
    # others (once per micro-batch), and a rung's selection pass runs the members it ranks ...
    train, select, peaks = _probed(halving)
    live = set(NAMES)
    for step in range(1, 7):
        assert set(train[step]) == live and len(set(train[step].values())) == 1, (step, train[step])
        for d in (d for d in decisions if d["step"] == step):
            assert set(select[step]) == live
            live -= {NAMES[k] for k in d["culled"]}
    assert set(select) == {d["step"] for d in decisions}
    # ... and each step's peak memory (weights, gradients, optimizer state and what the step allocates) falls
    # with the members in the pass ...
    assert max(peaks[1], peaks[2]) > peaks[3] > max(peaks[4], peaks[5], peaks[6]), peaks
    # ... and of the engine: the last checkpoint holds the survivor's parameters alone.
    state = torch.load(halving / "checkpoints" / "step_00000006" / "elastic.pt", weights_only=False)
    assert {name.split(".")[1] for name in state["master"]} == {"0"}
    members = {m["name"]: m for m in _report(halving)["members"]}
    for k in decisions[0]["culled"] + decisions[1]["culled"]:
        left = members[NAMES[k]]["left"]
        meta = json.loads((halving / "members" / NAMES[k] / "final" / "meta.json").read_text())
        assert left["why"] == "culled" and meta["culled"]["rung"] == left["rung"] and meta["step"] == left["step"]
    assert "Successive halving (eta 2) on heldout top1" in (halving / "sweep.md").read_text()
    # The report's cost in single-run units, phase by phase (steps 1-2, 3, 4-6): a member of this lr grid costs
    # what the base config does, 1/6 of its run a step, and K members cost the tower once plus K side networks.
    cost, (first, second) = _report(halving)["halving"]["cost"], decisions
    four, two, one = first["cost"] / 2, second["cost"] - first["cost"], (cost - second["cost"]) / 3
    assert one == pytest.approx(1 / 6) and four - two == pytest.approx(2 * (two - one))


def test_a_stop_right_after_a_rung_resumes_with_its_decision_at_any_world_size(
    synth: Path, tmp_path: Path, one_rank_halving: tuple[Path, Path, str]
) -> None:
    """SIGTERM as soon as rung 1 is decided on one rank, then two resumes of the stopped run. On one rank every
    member ends bit for bit where the uninterrupted run ends. On two ranks the decisions stay and rung 2 ranks
    rung 1's survivors; the bits cannot match a run at another world size, since ranks take a micro-batch's
    videos round robin and BatchNorm's batch statistics then see other groups of clips."""
    stopped = tmp_path / "stopped"
    cmd = _command(synth, stopped, 1, GRID, *RUN, *HALVING)
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, log = time.monotonic() + 300, []
    for line in proc.stdout:  # the signal lands while the run goes on after rung 1
        log.append(line)
        if line.startswith("[s4v] halving rung 1"):
            os.kill(proc.pid, signal.SIGTERM)
            break
        assert time.monotonic() < deadline, "".join(log)
    log += proc.stdout.readlines()
    assert proc.wait(timeout=120) == EXIT_STOPPED, "".join(log)
    step = int((stopped / "checkpoints" / "latest").read_text().removeprefix("step_"))
    assert 2 <= step < 6, "".join(log)
    meta = json.loads((stopped / "checkpoints" / f"step_{step:08d}" / "meta.json").read_text())
    assert [d["rung"] for d in meta["halving"]["decisions"]] == ([0] if step < 3 else [0, 1])
    first = meta["halving"]["decisions"][0]

    same, other = tmp_path / "same", tmp_path / "other"
    shutil.copytree(stopped, same)
    shutil.copytree(stopped, other)
    r = _train(synth, same, 1, GRID, *RUN, *HALVING, "--resume")
    assert "[s4v] halving rung 1" not in r.stdout  # decided once, before the stop
    _, uninterrupted, _ = one_rank_halving
    assert _report(same)["halving"]["decisions"] == _report(uninterrupted)["halving"]["decisions"]
    for name in NAMES:  # the survivor and the culled members' exports
        _assert_equal(same / "members" / name / "final", uninterrupted / "members" / name / "final")

    r = _train(synth, other, 2, GRID, *RUN, *HALVING, "--resume")
    assert "[s4v] halving rung 1" not in r.stdout
    decisions = _report(other)["halving"]["decisions"]
    assert decisions[0] == first and [d["rung"] for d in decisions] == [0, 1]
    assert set(decisions[1]["live"]) == set(first["kept"])
    culled_first = {NAMES[k] for k in first["culled"]}
    assert all((other / "members" / n / "final" / "trainable.pt").is_file() for n in NAMES)
    assert {m["name"] for m in _report(other)["members"] if (m["left"] or {}).get("rung") == 0} == culled_first
