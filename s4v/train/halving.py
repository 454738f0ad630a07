"""Synchronous successive halving of a sweep's members (`sweep.halving`).

At each rung (a step of the run) every live member is scored on the selection split in one frozen pass, all
are ranked together and the best max(1, floor(n / eta)) train on; the others are culled. `survivors` is that
rule, `rung_steps` turns rungs given in epochs into optimizer steps, and `HalvingPlan` holds a run's rungs
and the decisions taken, which it saves in the checkpoint meta so a resumed run never takes one twice.

Plain Python, no torch or process group: the trainer all-reduces the metrics before calling `decide`, so
every rank holds the same numbers and, the rule being deterministic, takes the same decision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, get_args

from s4v.config.schema import HalvingConfig, HalvingMetric

# The task's first tracked metric (RecognitionTask.tracked lists top1 first; halving is recognition only).
DEFAULT_METRIC: str = get_args(HalvingMetric)[0]
STATE_VERSION = 1  # meta["halving"]: {"version": 1, "decisions": [Decision.state_dict(), ...], "cost": units}
OPTIMISTIC = (
    "members were selected on the validation split (sweep.halving.select=val): the survivors' validation "
    "figures are optimistic, since that split also chose them"
)


def survivors(metrics: Sequence[float], eta: int, higher_is_better: bool = True) -> list[int]:
    """Indices (in member order) of the best max(1, floor(n / eta)) of `metrics`, one per live member.

    A non-finite metric ranks last, whichever way is better; equal metrics rank by member order (a stable
    sort), so the decision depends on the numbers alone and every rank takes it alike."""
    if eta < 2:
        raise ValueError(f"eta={eta}: a rung must keep fewer members than it ranks (eta >= 2)")
    if not metrics:
        return []
    sign = -1.0 if higher_is_better else 1.0

    def key(k: int) -> tuple[bool, float]:
        value = float(metrics[k])
        finite = math.isfinite(value)
        return (not finite, sign * value if finite else 0.0)

    ranked = sorted(range(len(metrics)), key=key)
    return sorted(ranked[: max(1, len(metrics) // eta)])


def halvings(members: int, eta: int) -> int:
    """Rungs the rule needs to bring `members` down to one (floor(n / eta) each time)."""
    count = 0
    while members > 1:
        members, count = members // eta, count + 1
    return count


def default_fractions(members: int, eta: int) -> list[float]:
    """The default rungs as fractions of the run: eta^-R, ..., eta^-2, eta^-1 with R = halvings(members, eta).

    Geometric, as successive halving budgets its rungs: each rung's survivors get eta times the training the
    previous rung's members had, and the last decision leaves the final 1 - 1/eta of the run to one member
    (8 members at eta 2: after 1/8, 1/4 and 1/2 of the run)."""
    rungs = halvings(members, eta)
    return [float(eta) ** -(rungs - i) for i in range(rungs)]


def rung_steps(rungs: Sequence[float], steps_per_epoch: int, max_steps: int) -> list[int]:
    """Rungs in epochs (fractions allowed) -> the optimizer steps after which they decide.

    Rounded to the nearest step (halves up), at least one step after the previous rung so each rung stays a
    decision of its own (on a short epoch close rungs would otherwise merge); rungs from the run's last step
    on are dropped: a decision there has no training left to save (a run cut short by `train.max_steps`)."""
    steps: list[int] = []
    for epochs in rungs:
        step = max(math.floor(epochs * steps_per_epoch + 0.5), (steps[-1] if steps else 0) + 1)
        if step >= max_steps:
            break
        steps.append(step)
    return steps


@dataclass(frozen=True)
class Decision:
    """One rung taken: which members it ranked (`live`, member indices) on which scores, who went on."""

    rung: int  # index into HalvingPlan.steps
    step: int  # the optimizer step after which it was taken
    epoch: float  # step / steps_per_epoch
    metric: str
    live: list[int]
    scores: list[float]  # the metric of each member of `live`, in that order
    kept: list[int]
    culled: list[int]
    cost: float | None = None  # the run's cost up to this step in single-run units (None: not counted)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able: a non-finite score is saved as null (strict JSON has no NaN); it ranked last either way."""
        return {**asdict(self), "scores": [s if math.isfinite(s) else None for s in self.scores]}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Decision:
        return cls(**{**state, "scores": [math.nan if s is None else float(s) for s in state["scores"]]})


class HalvingPlan:
    """A run's rungs (`steps`) and the decisions taken so far; `due` says which rung to decide next. It also
    keeps the run's cost so far in single-run units: `run_flops` is one run of the base config (no member's
    overrides) alone over the whole schedule, and the trainer tells it each step's FLOPs (`spend`)."""

    def __init__(
        self, cfg: HalvingConfig, members: int, steps_per_epoch: int, max_steps: int, run_flops: float
    ) -> None:
        self.eta, self.select = cfg.eta, cfg.select
        self.run_flops, self.cost = run_flops, 0.0
        self.metric = cfg.metric or DEFAULT_METRIC
        self.steps_per_epoch = steps_per_epoch
        # Default rungs are fractions of the run as it will go (`train.max_steps` included), so a shortened
        # run halves within its own length; given rungs are epochs of the full schedule.
        epochs = cfg.rungs
        if epochs is None:
            epochs = [f * max_steps / steps_per_epoch for f in default_fractions(members, cfg.eta)]
        self.steps = rung_steps(epochs, steps_per_epoch, max_steps)
        self.decisions: list[Decision] = []

    @property
    def culled(self) -> set[int]:
        """Members no longer trained (by member index)."""
        return {k for d in self.decisions for k in d.culled}

    def due(self, step: int) -> int | None:
        """The first rung not yet decided whose step has been reached; None when there is none.

        Reached rather than equal: a rung passed without its decision (a checkpoint written between the
        step and the decision, then a resume) is decided at the next call instead of never."""
        taken = {d.rung for d in self.decisions}
        return next((i for i, s in enumerate(self.steps) if s <= step and i not in taken), None)

    def decide(self, rung: int, step: int, live: Sequence[int], scores: Sequence[float]) -> Decision:
        """Apply the rule at `rung` to the live members' `scores` (same order as `live`) and record it."""
        if any(d.rung == rung for d in self.decisions):
            raise ValueError(f"halving rung {rung} was already decided")
        if len(live) != len(scores):
            raise ValueError(f"{len(scores)} scores for {len(live)} live members")
        kept = [live[i] for i in survivors(scores, self.eta)]
        decision = Decision(
            rung=rung,
            step=step,
            epoch=step / self.steps_per_epoch,
            metric=self.metric,
            live=list(live),
            scores=[float(s) for s in scores],
            kept=kept,
            culled=[k for k in live if k not in kept],
            cost=self.cost,
        )
        self.decisions.append(decision)
        return decision

    def spend(self, flops: float) -> None:
        """Count a step of `flops` (this rank's, as `run_flops` is) into the run's cost."""
        self.cost += flops / self.run_flops

    def summary(self) -> dict[str, Any]:
        """For the sweep report: the settings, the rungs and every decision, and the caveat of `select: val`."""
        return {
            "eta": self.eta,
            "metric": self.metric,
            "select": self.select,
            "rung_steps": self.steps,
            "decisions": [d.state_dict() for d in self.decisions],
            "cost": self.cost,
            "note": OPTIMISTIC if self.select == "val" else None,
        }

    # -- checkpoints ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "decisions": [d.state_dict() for d in self.decisions], "cost": self.cost}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore the decisions taken and the cost so far (None: none yet)."""
        state = state or {}
        self.decisions = [Decision.from_state_dict(d) for d in state.get("decisions", [])]
        self.cost = state.get("cost", 0.0)
