"""One member of a training run: a side network trained on the shared frozen pass, with its recipe.

A `Member` is everything the run knows of one of them: its name, overrides and config, its trainable modules,
its saved `MemberState` (bad steps, skipped steps, failure, evaluation history, MLflow run id, when it left the
pass), its tracker, export and evaluation directories and how messages name it. Where its files go and how it
is tracked is the `RunLayout`'s to say; the run's members together are `s4v.train.members.MemberSet`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from s4v.config import MemberSpec
from s4v.train import checkpoint as ckpt
from s4v.train.layout import RunLayout
from s4v.train.tracking import Tracker


@dataclass
class MemberState:
    """What a checkpoint keeps of one member."""

    bad_in_a_row: int = 0
    skipped_steps: int = 0
    failure: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    mlflow_run_id: str | None = None
    # When it left the pass: {"why": "culled" | "failed", "step", "params"} (+ a cull's "rung", "metric", "score").
    left: dict[str, Any] | None = None

    def fail(self, why: str) -> None:
        self.failure = why

    def bad_step(self) -> int:
        """Count a skipped step; returns how many in a row."""
        self.bad_in_a_row += 1
        self.skipped_steps += 1
        return self.bad_in_a_row

    def good_step(self) -> None:
        self.bad_in_a_row = 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        fresh = MemberState(**state)
        self.__dict__.update(fresh.__dict__)


class Member:
    """One member: `module` holds its trainable state (a plain run's: the whole trainable view)."""

    def __init__(self, spec: MemberSpec, module: nn.Module | None, layout: RunLayout) -> None:
        self.spec = spec
        self.name, self.overrides, self.cfg = spec.name, spec.overrides, spec.cfg
        self.module = module  # None once it has left the pass
        self.state = MemberState()
        self.final_dir, self.eval_dir = layout.final_dir(self.name), layout.eval_dir(self.name)
        self.label = layout.label(self.name)
        self.export_extra = layout.export_meta(self.name, self.overrides)
        self.tracker: Tracker | None = None  # rank 0, once attached

    @property
    def failed(self) -> bool:
        return self.state.failure is not None

    def attach(self, tracker: Tracker) -> None:
        """Rank 0: track this member with `tracker` (the layout's choice), whose run id its state keeps."""
        self.tracker = tracker
        self.state.mlflow_run_id = tracker.run_id

    def fail(self, why: str) -> None:
        """This member has failed: it is marked, and its own MLflow run (a sweep's child) ends FAILED."""
        self.state.fail(why)
        if self.tracker is not None and self.tracker.nested:
            self.tracker.finish("FAILED")

    def leave(self, left: dict[str, Any]) -> None:
        """This member leaves the pass (`left`: see MemberState); its module goes with the old model."""
        self.state.left = {**left, "params": param_count(self.module)}
        self.module = None

    def move_to(self, module: nn.Module) -> None:
        """This member's trainable state now lives in `module` (the rebuilt model's, loaded with its values)."""
        self.module = module

    def zero_loss(self) -> torch.Tensor:
        """A loss of 0 that still reaches every parameter, so DeepSpeed sees finite (zero) gradients for a
        member whose own loss is not finite or that has failed."""
        return sum(p.sum() for p in self.module.parameters()) * 0.0

    def track(self, metrics: dict[str, float], step: int) -> None:
        if self.tracker is not None and not self.failed:
            self.tracker.log_metrics(metrics, step)

    def export(self, run_meta: dict[str, Any], step: int) -> Path:
        """Rank 0: this member as a normal `final/` of its own config, with its own MLflow run id."""
        # The run's checkpoint bookkeeping stays out: the member's own run id and state are what it carries.
        own = {k: v for k, v in run_meta.items() if k not in ("members", "halving", "mlflow_run_id", "wall_s")}
        meta = {**own, "mlflow_run_id": self.state.mlflow_run_id, **self.export_extra, "step": step}
        return ckpt.export_trainable(self.module, self.final_dir, self.cfg, meta)

    def export_culled(self, run_meta: dict[str, Any], step: int, left: dict[str, Any], key: str) -> None:
        """Rank 0: a member culled at a halving rung, exported as it stood, marked culled with its selection
        score (`key`); its own MLflow run ends with that mark."""
        final = self.export({**run_meta, "culled": left}, step)
        if self.tracker is not None:
            self.tracker.log_metrics({key: left["score"]}, step)
            self.tracker.log_artifacts(final, "final")
            if self.tracker.nested:
                self.tracker.log_params({"culled_at_rung": left["rung"] + 1, "culled_at_step": step})
                self.tracker.finish()


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
