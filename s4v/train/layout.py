"""Where a run's files go and how its members are tracked: the one place that knows a plain run from a sweep.

Every run is a set of members (`s4v.train.members`); a plain run is a set of one. What differs between the
two is only how the result is laid out for the user: a plain run's member exports to `<out>/final/`,
reports to `<out>/eval/` and tracks in the run's own MLflow run; a sweep member exports to
`<out>/members/<name>/final/`, tracks in a child run of its own, is named in messages, and the sweep gets
`sweep.{md,json,png}`. Everything else (the loop, the guard, the optimizer) treats K members alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s4v.config import MEMBERS_DIR, Config, is_sweep, is_sweep_root
from s4v.core.errors import UserError
from s4v.train.tracking import Tracker


@dataclass(frozen=True)
class RunLayout:
    out: Path
    sweep: bool

    @classmethod
    def of(cls, cfg: Config) -> RunLayout:
        return cls(Path(cfg.train.out_dir), is_sweep(cfg))

    def final_dir(self, name: str) -> Path:
        return self.out / MEMBERS_DIR / name / "final" if self.sweep else self.out / "final"

    def eval_dir(self, name: str) -> Path:
        return self.out / MEMBERS_DIR / name / "eval" if self.sweep else self.out / "eval"

    def label(self, name: str) -> str:
        """How messages name a member ("" for a plain run's one member)."""
        return f"member {name}" if self.sweep else ""

    def tracker(self, run: Tracker, name: str, run_id: str | None) -> Tracker:
        """A member's tracker: its own child run in a sweep (continued when `run_id` is known), else the run's."""
        return run.child(name, run_id) if self.sweep else run

    @property
    def writes_report(self) -> bool:
        """Whether `sweep.{md,json,png}` (and per-member curves) are written."""
        return self.sweep

    @property
    def guards_gradients(self) -> bool:
        """Per-member non-finite gradient hooks: only a sweep needs them (DeepSpeed's overflow check sees all
        members at once); a plain run's fp16 loss scaling must still see its overflows."""
        return self.sweep

    def export_meta(self, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
        return {"sweep_member": name, "sweep_overrides": overrides} if self.sweep else {}

    def headline(self, per_member: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """What `result.json` shows of the members' results: the one member's flat, a sweep's by name."""
        if self.sweep:
            return {"members": per_member}
        return next(iter(per_member.values()), {})

    def failure(self, step: int, limit: int, in_a_row: int, last_good: str) -> str:
        """The one-line error of a run whose members have all failed."""
        if self.sweep:
            return (
                f"every member of the sweep failed (the last at step {step}: train.max_bad_steps={limit} "
                f"consecutive non-finite steps); last good checkpoint: {last_good}"
            )
        return (
            f"{in_a_row} consecutive steps with a non-finite loss or gradient (up to step {step}, "
            f"train.max_bad_steps={limit}); last good checkpoint: {last_good}"
        )


@dataclass(frozen=True)
class Export:
    """One exported member found under a path given to `launch/eval.py`."""

    name: str
    final: Path
    label: str  # how messages name it ("": a run's own final/, named by its path)
    report_subdir: str  # under the report directory ("": one member's report is the directory itself)


def exported_members(path: Path) -> tuple[list[Export], list[dict[str, Any]] | None]:
    """The exported members under `path` and, for a sweep's out_dir, its report's rows (every member, failed
    ones included); `path` itself is one member's `final/` or `checkpoints/step_*` otherwise (rows: None)."""
    if not is_sweep_root(path):
        return [Export("", path, "", "")], None
    rows = json.loads((path / "sweep.json").read_text())["members"]
    exports = [Export(r["name"], path / r["export"], r["name"], r["name"]) for r in rows if r["export"] is not None]
    if not exports:
        raise UserError(f"{path}: no member of this sweep was exported (all failed, or the run did not finish)")
    return exports, rows
