"""Successive halving in a training run: the plan, the selection split and the decision at a rung.

`s4v.train.halving` holds the rule and the decisions (plain Python); here they meet the run: the live members
are scored on the selection split (the held-out carve of the training split, `data.heldout_fraction`, or the
validation split with `sweep.halving.select: val`) in one frozen pass, every rank takes the same decision
from the same gathered scores, and rank 0 exports each culled member as it stood. The trainer then takes the
culled members out of the pass (`s4v.train.rebuild`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from s4v.config import Config
from s4v.core.errors import UserError
from s4v.data import build_loader
from s4v.data.loader import VideoLoader
from s4v.train import rebuild
from s4v.train.distributed import DistInfo
from s4v.train.halving import Decision, HalvingPlan
from s4v.train.members import MemberSet
from s4v.train.tasks import Task

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine


def halving_plan(
    cfg: Config, members: int, steps_per_epoch: int, max_steps: int, step_flops: Callable[[list[Config]], float],
    engine: DeepSpeedEngine, view: nn.Module,
) -> HalvingPlan | None:  # fmt: skip
    """The run's plan (None without `sweep.halving`); refused where culled members could not leave the pass.
    `step_flops(member_cfgs)`: a step's FLOPs with those members in the pass (the base config alone is the
    single run the cost is counted in)."""
    if cfg.sweep.halving is None:
        return None
    if not rebuild.can_shrink(engine, view):
        raise UserError(
            "sweep.halving: culled members leave the pass through per-parameter optimizer state, which this "
            "DeepSpeed layout (bf16 or fp16 without ZeRO) does not expose; use ZeRO stage 1 or 2, or fp32"
        )
    return HalvingPlan(cfg.sweep.halving, members, steps_per_epoch, max_steps, max_steps * step_flops([cfg]))


def select_loader(cfg: Config, plan: HalvingPlan | None, dist: DistInfo, train: VideoLoader) -> VideoLoader | None:
    """The held-out split's loader when the plan selects on it (None: no plan, or `select: val`)."""
    if plan is None or plan.select != "heldout":
        return None
    return build_loader(cfg.data, "heldout", dist.rank, dist.world_size, cfg.train.seed)


def decide(
    rung: int,
    step: int,
    plan: HalvingPlan,
    task: Task,
    model: nn.Module,
    loader: VideoLoader,
    members: MemberSet,
    run_meta: dict[str, Any],
    is_main: bool,
) -> dict[int, dict[str, Any]]:
    """Collective: score the live members, take the rung's decision, record each score in the member's history;
    rank 0 prints it and exports the culled members. Returns the culled ones (model indices) with their
    `left` records (MemberState.left)."""
    results = task.evaluate(model, loader)  # gathered over the ranks: every rank ranks the same numbers
    live = members.live
    scores = [task.tracked(results[k])[plan.metric] for k in live]
    decision = plan.decide(rung, step, [members.sweep_index(k) for k in live], scores)
    if is_main:
        print(f"[s4v] {line(decision, members)}", flush=True)
    going = {}
    for k, score in zip(live, scores, strict=True):
        m = members[k]
        m.state.history.append({"epoch": decision.epoch, "step": step, "rung": rung, "split": plan.select,
                                plan.metric: score})  # fmt: skip
        if members.sweep_index(k) not in decision.culled:
            continue
        going[k] = {"why": "culled", "step": step, "rung": rung, "metric": plan.metric, "score": score}
        if is_main:
            m.export_culled(run_meta, step, going[k], f"{plan.select}/{plan.metric}")
    return going


def line(decision: Decision, members: MemberSet) -> str:
    """One line for the log: the rung, each member's score, who goes on."""
    names = [members.everyone[k].name for k in decision.live]
    scored = ", ".join(f"{n} {s:.4g}" for n, s in zip(names, decision.scores, strict=True))
    kept = ", ".join(members.everyone[k].name for k in decision.kept)
    return (
        f"halving rung {decision.rung + 1} after step {decision.step} (epoch {decision.epoch:.3g}), "
        f"{decision.metric}: {scored}; going on: {kept}"
    )
