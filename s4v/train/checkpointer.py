"""A run's checkpoints as the trainer sees them: where they go, what their meta holds and when the next is due.

The meta of a run (`meta.json` in every checkpoint and export) is this object's: the facts a resume checks
(classes, frozen tower fingerprint and dtype, world size, DeepSpeed JSON), the MLflow run id, the members'
states and the wall time summed over every segment a stop and resume made of the run. The files themselves
are `s4v.train.checkpoint`'s.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from s4v.config import Config
from s4v.core.preemption import CheckpointClock
from s4v.train import checkpoint as ckpt
from s4v.train.checkpoint import DataPosition
from s4v.train.halving import HalvingPlan
from s4v.train.members import MemberSet

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine


def find_checkpoint(cfg: Config, resume: str | None) -> Path | None:
    """The checkpoint `resume` names ("auto": train.out_dir's latest); None when there is none to load."""
    if not resume:
        return None
    root = Path(cfg.train.out_dir) / "checkpoints"
    path = ckpt.latest_checkpoint(root) if resume == "auto" else Path(resume)
    if path is None:
        print(f"[s4v] no checkpoint under {root}; starting from scratch", flush=True)
    return path


class Checkpointer:
    def __init__(self, cfg: Config, meta: dict[str, Any], t_start: float) -> None:
        """`meta`: the run's facts (`s4v.train.setup.run_meta`); `t_start`: when this segment of the run began."""
        self.cfg, self.meta = cfg, meta
        self.root = Path(cfg.train.out_dir) / "checkpoints"
        self.clock = CheckpointClock(cfg.train.ckpt_every_minutes)
        self.t_start, self.wall_before = t_start, 0.0

    @property
    def run_id(self) -> str | None:
        """The run's MLflow run: the resumed checkpoint's, then the one the tracker opened (`track_as`)."""
        return self.meta.get("mlflow_run_id")

    def track_as(self, run_id: str | None) -> None:
        self.meta["mlflow_run_id"] = run_id

    def latest(self) -> Path | None:
        return ckpt.latest_checkpoint(self.root)

    def wall(self) -> float:
        """The run's wall time so far, over every segment a stop and resume made of it."""
        return self.wall_before + time.perf_counter() - self.t_start

    def resume(
        self,
        path: Path | None,
        engine: DeepSpeedEngine,
        view: nn.Module,
        position: DataPosition,
        members: MemberSet,
        halving: HalvingPlan | None,
    ) -> Path | None:
        """Collective: load checkpoint `path` (`find_checkpoint`) into the engine, the data position, the members and
        the halving decisions; None when there is none to load."""
        if path is None:
            return None
        previous = ckpt.check_resumable(path, self.cfg, self.meta)
        ckpt.load_checkpoint(engine, view, path, position, self.meta)
        self.meta["mlflow_run_id"] = previous.get("mlflow_run_id")
        members.load_state_dict(previous.get("members"))
        if halving is not None:
            halving.load_state_dict(previous.get("halving"))
        self.wall_before = previous.get("wall_s", 0.0)  # absent in checkpoints written before it was kept
        return path

    def save(
        self,
        engine: DeepSpeedEngine,
        view: nn.Module,
        position: DataPosition,
        members: MemberSet,
        halving: HalvingPlan | None,
    ) -> Path:
        """Collective: a checkpoint of the current position."""
        self.meta["members"] = members.state_dict()
        if halving is not None:
            self.meta["halving"] = halving.state_dict()
        self.meta["wall_s"] = self.wall()
        path = ckpt.save_checkpoint(
            engine, view, self.root, position, self.cfg, self.meta, self.cfg.train.keep_checkpoints
        )
        self.clock.reset()
        return path
