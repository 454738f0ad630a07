"""Successive halving of a sweep: the survivor rule, rungs in steps, the plan's saved decisions, and the
`sweep.halving` section as the config loader builds and refuses it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from s4v.config import dump_config, load_config
from s4v.config.schema import HalvingConfig
from s4v.core.errors import UserError
from s4v.train.halving import (
    OPTIMISTIC,
    Decision,
    HalvingPlan,
    default_fractions,
    halvings,
    rung_steps,
    survivors,
)

NAN, INF = math.nan, math.inf
LRS = "sweep.grid.optim.lr=[1.0e-4,3.0e-4,1.0e-3,3.0e-3]"  # four members
HELDOUT = "data.heldout_fraction=0.1"


# -- the rule ----------------------------------------------------------------------------------------------


def test_survivors_keep_the_best_floor_n_over_eta_in_member_order() -> None:
    assert survivors([0.1, 0.4, 0.3, 0.2], eta=2) == [1, 2]
    assert survivors([0.5, 0.1, 0.9, 0.2, 0.3, 0.8], eta=3) == [2, 5]
    assert survivors([0.5, 0.1, 0.9, 0.2, 0.3, 0.8, 0.7], eta=3) == [2, 5]  # floor(7 / 3) = 2
    assert survivors([0.5, 0.1, 0.9, 0.2, 0.3], eta=2) == [0, 2]  # floor(5 / 2) = 2
    assert survivors([0.2, 0.7], eta=3) == [1]  # floor(2 / 3) = 0: the best one still goes on
    assert survivors([0.2], eta=2) == [0]  # the last member stays
    assert survivors([], eta=2) == []
    with pytest.raises(ValueError, match="eta >= 2"):
        survivors([0.1, 0.2], eta=1)


def test_non_finite_members_rank_last_either_way() -> None:
    assert survivors([NAN, 0.1, INF, 0.2], eta=2) == [1, 3]
    assert survivors([NAN, INF, -INF, 0.0], eta=2) == [0, 3]  # member 3, the one finite, then 0 by member order
    assert survivors([0.5, NAN, 0.1, -INF], eta=2, higher_is_better=False) == [0, 2]  # -inf is no best loss
    assert survivors([NAN, NAN, NAN], eta=3) == [0]


def test_ties_break_by_member_order() -> None:
    assert survivors([0.5, 0.5, 0.5, 0.5], eta=2) == [0, 1]
    assert survivors([0.1, 0.5, 0.2, 0.5, 0.5], eta=2) == [1, 3]
    assert survivors([0.3, 0.3, 0.1, 0.3], eta=2, higher_is_better=False) == [0, 2]


def test_lower_is_better_metric() -> None:
    losses = [2.3, 0.7, 1.1, 0.9, 4.0, 0.8]
    assert survivors(losses, eta=2, higher_is_better=False) == [1, 3, 5]
    assert survivors(losses, eta=3, higher_is_better=False) == [1, 5]


# -- rungs -------------------------------------------------------------------------------------------------


def test_default_rungs_are_geometric_with_the_last_at_one_over_eta() -> None:
    assert [halvings(k, 2) for k in (1, 2, 3, 4, 8, 9)] == [0, 1, 1, 2, 3, 3]
    assert [halvings(k, 3) for k in (2, 3, 8, 9, 10, 27)] == [1, 1, 2, 2, 2, 3]
    assert default_fractions(8, 2) == [1 / 8, 1 / 4, 1 / 2]
    assert default_fractions(9, 3) == pytest.approx([1 / 9, 1 / 3])
    assert default_fractions(4, 3) == pytest.approx([1 / 3])  # 4 -> 1 in one rung
    assert default_fractions(1, 2) == []


def test_rung_steps_from_epochs() -> None:
    assert rung_steps([1, 2, 4], steps_per_epoch=10, max_steps=100) == [10, 20, 40]
    assert rung_steps([0.125, 0.25, 0.5], steps_per_epoch=100, max_steps=800) == [13, 25, 50]  # 12.5: halves up
    assert rung_steps([0.125], steps_per_epoch=20, max_steps=800) == [3]  # 2.5 -> 3, not to even as round() does
    assert rung_steps([0.1, 0.2, 0.3], steps_per_epoch=30, max_steps=100) == [3, 6, 9]  # 0.1 * 30 is 3.0000000000000004
    assert rung_steps([0.01, 0.02, 0.5], steps_per_epoch=10, max_steps=100) == [1, 2, 5]  # never step 0, never merged
    assert rung_steps([1, 2, 3], steps_per_epoch=10, max_steps=25) == [10, 20]  # past the run's end: dropped
    assert rung_steps([1, 2], steps_per_epoch=10, max_steps=20) == [10]  # at the last step: nothing left to save
    assert rung_steps([], steps_per_epoch=10, max_steps=20) == []


def test_plan_steps_from_defaults_and_given_rungs() -> None:
    plan = HalvingPlan(HalvingConfig(eta=2), members=8, steps_per_epoch=10, max_steps=80, run_flops=1.0)
    assert plan.steps == [10, 20, 40] and plan.metric == "top1" and plan.select == "heldout"
    # The default follows the run as it will go: max_steps shorter than the epochs scales it down...
    short = HalvingPlan(HalvingConfig(eta=2), members=8, steps_per_epoch=10, max_steps=16, run_flops=1.0)
    assert short.steps == [2, 4, 8]
    # ...whereas given rungs are epochs, and those past the end are dropped.
    plan = HalvingPlan(
        HalvingConfig(eta=3, rungs=[0.5, 1, 3], metric="top5"), 9, steps_per_epoch=10, max_steps=25, run_flops=1.0
    )
    assert plan.steps == [5, 10] and plan.metric == "top5"


# -- the plan ----------------------------------------------------------------------------------------------


def _plan() -> HalvingPlan:
    return HalvingPlan(HalvingConfig(eta=2, rungs=[1, 2]), members=4, steps_per_epoch=10, max_steps=40, run_flops=1.0)


def test_plan_decides_each_rung_once_and_culls() -> None:
    plan = _plan()
    assert [plan.due(s) for s in (1, 9)] == [None, None]
    assert plan.due(10) == 0
    first = plan.decide(0, 10, live=[0, 1, 2, 3], scores=[0.2, 0.6, NAN, 0.4])
    assert (first.kept, first.culled, first.epoch, first.metric) == ([1, 3], [0, 2], 1.0, "top1")
    assert plan.culled == {0, 2} and plan.due(10) is None and plan.due(15) is None
    with pytest.raises(ValueError, match="already decided"):
        plan.decide(0, 10, live=[1, 3], scores=[0.6, 0.4])
    second = plan.decide(plan.due(20), 20, live=[1, 3], scores=[0.5, 0.5])
    assert second.kept == [1] and plan.culled == {0, 2, 3} and plan.due(39) is None
    with pytest.raises(ValueError, match="2 scores for 1 live"):
        _plan().decide(0, 10, live=[0], scores=[0.1, 0.2])


def test_plan_state_round_trip_and_resume_never_decides_twice() -> None:
    plan = _plan()
    plan.decide(0, 10, live=[0, 1, 2, 3], scores=[0.2, INF, NAN, 0.4])
    state = json.loads(json.dumps(plan.state_dict(), allow_nan=False))  # strict JSON: non-finite as null
    assert state["decisions"][0]["scores"] == [0.2, None, None, 0.4]

    resumed = _plan()
    resumed.load_state_dict(state)
    assert resumed.due(10) is None and resumed.due(12) is None  # the taken rung is not due again
    assert resumed.culled == plan.culled == {1, 2}  # inf ranked last like NaN
    assert resumed.decisions[0] == Decision.from_state_dict(plan.decisions[0].state_dict())
    assert math.isnan(resumed.decisions[0].scores[1])
    assert resumed.due(20) == 1

    fresh = _plan()
    fresh.load_state_dict(None)  # nothing decided yet
    assert fresh.decisions == [] and fresh.due(10) == 0


def test_a_rung_passed_without_its_decision_is_due_at_the_next_call() -> None:
    plan = _plan()
    assert plan.due(11) == 0  # e.g. resumed from a checkpoint written at step 10, before the decision
    plan.decide(0, 11, live=[0, 1, 2, 3], scores=[1, 2, 3, 4])
    assert plan.due(25) == 1


def test_the_cost_so_far_is_counted_in_single_run_units_and_resumed() -> None:
    """A 40-step run of 4 members whose pass costs 5 units of FLOPs against 2 for the base config alone: 10
    steps at 4 members cost 10 * 5 / (40 * 2) = 0.625 single runs, recorded with the rung taken there."""
    plan = HalvingPlan(HalvingConfig(eta=2, rungs=[1, 2]), members=4, steps_per_epoch=10, max_steps=40, run_flops=80.0)
    for _ in range(10):
        plan.spend(5.0)
    assert plan.decide(0, 10, live=[0, 1, 2, 3], scores=[1, 2, 3, 4]).cost == pytest.approx(0.625)
    plan.spend(3.5)
    resumed = _plan()
    resumed.load_state_dict(json.loads(json.dumps(plan.state_dict())))
    assert resumed.cost == pytest.approx(0.625 + 3.5 / 80) and resumed.summary()["cost"] == resumed.cost
    assert resumed.decisions[0].cost == pytest.approx(0.625)


def test_summary_says_a_validation_selection_is_optimistic() -> None:
    assert _plan().summary()["note"] is None
    plan = HalvingPlan(HalvingConfig(eta=2, select="val"), members=4, steps_per_epoch=10, max_steps=40, run_flops=1.0)
    summary = plan.summary()
    assert summary["note"] == OPTIMISTIC and "optimistic" in OPTIMISTIC
    assert summary["rung_steps"] == [10, 20] and summary["decisions"] == []


# -- the config section ------------------------------------------------------------------------------------


def test_command_line_overrides_build_the_section() -> None:
    assert load_config(None, [LRS]).sweep.halving is None  # absent: a static sweep
    halving = load_config(None, [LRS, HELDOUT, "sweep.halving.eta=2"]).sweep.halving
    assert halving == HalvingConfig(eta=2)  # the other keys keep their defaults
    halving = load_config(
        None, [LRS, "sweep.halving.rungs=[1, 2.5]", "sweep.halving.metric=top5", "sweep.halving.select=val"]
    ).sweep.halving
    assert halving == HalvingConfig(eta=3, rungs=[1, 2.5], metric="top5", select="val")
    assert load_config(None, [LRS, "sweep.halving.select=val", "sweep.halving="]).sweep.halving is None  # null


def test_yaml_section_and_its_dump_round_trip(tmp_path: Path) -> None:
    run = tmp_path / "run.yaml"
    run.write_text(
        "data: {root: data/synth, heldout_fraction: 0.2}\n"
        "sweep:\n  grid: {optim.lr: [1.0e-3, 3.0e-3, 1.0e-2]}\n  halving: {eta: 3, rungs: [2]}\n"
    )
    cfg = load_config(run)
    assert cfg.sweep.halving == HalvingConfig(eta=3, rungs=[2])
    dump_config(cfg, tmp_path / "dumped.yaml")
    assert load_config(tmp_path / "dumped.yaml") == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([LRS, HELDOUT, "sweep.halving.eta=1"], r"sweep\.halving\.eta: 1 < 2; "),
        ([LRS, HELDOUT, "sweep.halving.eta=2.5"], r"sweep\.halving\.eta: expected int, got 2\.5"),
        ([LRS, HELDOUT, "sweep.halving.rungs=[]"], r"sweep\.halving\.rungs: an empty list"),
        ([LRS, HELDOUT, "sweep.halving.rungs=[0, 1]"], r"sweep\.halving\.rungs: 0 is not a positive number"),
        ([LRS, HELDOUT, "sweep.halving.rungs=[1, x]"], r"sweep\.halving\.rungs: 'x' is not a positive number"),
        ([LRS, HELDOUT, "sweep.halving.rungs=[true]"], r"sweep\.halving\.rungs: True is not a positive number"),
        ([LRS, HELDOUT, "sweep.halving.rungs=[2, 1]"], r"sweep\.halving\.rungs: \[2, 1\] must increase"),
        ([LRS, HELDOUT, "sweep.halving.rungs=[1, 1]"], r"sweep\.halving\.rungs: \[1, 1\] must increase"),
        ([LRS, HELDOUT, "sweep.halving.rungs=1"], r"sweep\.halving\.rungs: expected a list, got 1"),
        (
            [LRS, HELDOUT, "optim.epochs=4", "sweep.halving.rungs=[1, 4]"],
            r"sweep\.halving\.rungs: 4 is not before the end of the run \(optim\.epochs=4\)",
        ),
        ([LRS, HELDOUT, "sweep.halving.metric=loss"], r"sweep\.halving\.metric: 'loss' is not one of 'top1', "),
        ([LRS, HELDOUT, "sweep.halving.select=test"], r"sweep\.halving\.select: 'test' is not one of 'heldout'"),
        ([LRS, "sweep.halving.eta=2"], r"sweep\.halving\.select: heldout .*set data\.heldout_fraction"),
        ([HELDOUT, "sweep.halving.eta=2"], r"sweep\.halving: halving needs a sweep to choose from"),
        ([HELDOUT, "sweep.grid.optim.lr=[1.0e-3]", "sweep.halving.eta=2"], r"sweep\.halving: the sweep has 1 member"),
        (
            [LRS, HELDOUT, "model.task=retrieval", "model.preset=tiny-retrieval", "sweep.halving.eta=2"],
            r"sweep\.halving: retrieval sweeps are not supported yet",
        ),
        ([LRS, HELDOUT, "sweep.halving=3"], r"sweep\.halving: expected a mapping of keys, got 3"),
        ([LRS, HELDOUT, "sweep.halving.etta=2"], r"unknown config key sweep\.halving\.'etta' \(did you mean 'eta'\?\)"),
    ],
)
def test_bad_halving_is_refused_at_load_in_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=f"^{message}") as err:
        load_config(None, overrides)
    assert "\n" not in str(err.value)


def test_halving_on_the_validation_split_needs_no_heldout_split() -> None:
    cfg = load_config(None, [LRS, "sweep.halving.select=val", "optim.epochs=4", "sweep.halving.rungs=[0.5, 3.9]"])
    assert cfg.sweep.halving.select == "val" and cfg.data.heldout_fraction == 0.0
