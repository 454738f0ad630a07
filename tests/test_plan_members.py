"""`s4v plan` for a sweep: K side networks (members) on one frozen tower, accounted as one step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from s4v.core.errors import UserError
from s4v.memory.plan import cli as plan_cli
from s4v.memory.step import GiB, account_step
from s4v.memory.tracker import BLOCK
from s4v.memory.workloads import MethodSpec, workload
from s4v.models.classifier import Side4VideoClassifier, SweepClassifier

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--gpu-mem", "0.05", "--backbone", "tiny", "--min-batch", "2", "--precision", "fp32"]


def _spec(members: int, batch: int = 2) -> MethodSpec:
    return MethodSpec("side4video", "tiny", batch, options=dict(layers=2, dim=64), members=members)


def _peak(members: int, batch: int = 2) -> int:
    return account_step(workload(_spec(members, batch)), "fp32", "flash").peak


def test_one_member_is_the_plain_model_and_more_share_its_tower() -> None:
    one, two = (workload(_spec(k)).build(torch.device("meta")) for k in (1, 2))
    assert type(one) is Side4VideoClassifier and isinstance(two, SweepClassifier)
    assert workload(_spec(1)).name == workload(MethodSpec("side4video", "tiny", 2, options=_spec(1).options)).name

    def count(model: torch.nn.Module, trainable: bool) -> int:
        return sum(p.numel() for p in model.parameters() if p.requires_grad == trainable)

    assert count(two, True) == 2 * count(one, True) and count(two, False) == count(one, False)


def test_members_share_the_tower_and_each_adds_the_same_bytes() -> None:
    """Affine from two members on. At one, the frozen tower's transients set the peak in the forward pass;
    from two, the start of the backward does (every member's activations and head gradients), a line
    whose step is a little larger than the step from one to two."""
    p1, p2, p3, p4 = (_peak(k) for k in (1, 2, 3, 4))
    assert p1 < p2 < 2 * p1  # the tower is paid once
    assert p2 - p1 <= p3 - p2
    # Up to the allocator's rounding: a few 512-byte blocks alive or not where the peak falls.
    assert abs((p4 - p3) - (p3 - p2)) <= 64 * BLOCK


def test_members_fit_is_the_largest_count_that_fits(tmp_path, capsys) -> None:
    budget, out = 0.08, tmp_path / "plan.json"
    args = ["--gpu-mem", str(budget), *ARGS[2:], "--members-fit", "--layers", "2", "--dims", "64", "--json", str(out)]
    assert plan_cli(args) == 0
    fit = json.loads(out.read_text())["members_fit"]
    assert fit["members"] >= 4  # past the line's two points
    assert _peak(fit["members"]) <= budget * GiB < _peak(fit["members"] + 1)  # accounted afresh
    assert f"members fit: {fit['members']} side networks l=2, d=64, " in capsys.readouterr().out


def test_members_fit_defaults_to_the_light_preset_and_says_when_none_fits(capsys) -> None:
    assert plan_cli(["--gpu-mem", "0.001", *ARGS[2:], "--members-fit"]) == 1
    assert "not one member fits: side network l=4, d=64 (tiny's)" in capsys.readouterr().out


def test_bad_member_settings_are_one_line_errors() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "s4v.cli", "plan", *ARGS, "--members", "0"], cwd=REPO, capture_output=True, text=True
    )
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.splitlines() == ["error: --members 0: need at least one side network on the tower"]
    with pytest.raises(UserError, match="--dims 64 128: --members-fit plans one side network"):
        plan_cli([*ARGS, "--members-fit", "--dims", "64", "128"])


def test_one_member_prints_what_the_plan_printed_without_it_and_more_are_named(capsys) -> None:
    args = [*ARGS, "--layers", "2", "--dims", "64"]
    assert plan_cli(args) == 0
    plain = capsys.readouterr().out
    assert plan_cli([*args, "--members", "1"]) == 0
    assert capsys.readouterr().out == plain
    header = plain.splitlines()[-6]
    assert header.startswith("budget 0.05 GiB (0.05 - reserve 0), backbone tiny, 8 frames, fp32, flash attention (")
    assert "| layers | width | trainable (M) |" in plain and "members" not in plain
    assert plan_cli([*args, "--members", "2"]) == 0
    swept = capsys.readouterr().out
    assert "fp32, flash attention, 2 members on the tower (" in swept
    assert "| layers | width | trainable per member (M) |" in swept
    assert "recommended: 2 side networks l=2, d=" in swept


def test_members_are_checked() -> None:
    with pytest.raises(ValueError, match="members must be positive"):
        MethodSpec("side4video", "tiny", 2, members=0)
    with pytest.raises(ValueError, match="only Side4Video"):
        MethodSpec("aim", "tiny", 2, members=2)
