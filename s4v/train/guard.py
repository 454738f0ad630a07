"""Never train on NaN: steps with a non-finite loss or gradient are skipped and counted, too many in a row
stop the run, and no checkpoint is written with a non-finite tensor.

The optimizer step itself is skipped by DeepSpeed (its fp16, bf16 and ZeRO optimizers check gradients;
`engine.SkippingAdamW` does for a plain fp32 optimizer): the guard decides what a skipped step means, undoes
what the window's forwards changed (BatchNorm running statistics) and reports it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from s4v.errors import UserError
from s4v.train.distributed import all_gather_objects


class NonFiniteGuard:
    """Per accumulation window: the trainable modules' buffers at its start and the videos it read."""

    def __init__(self, view: nn.Module, limit: int, last_checkpoint: Callable[[], Path | None]) -> None:
        self.view, self.limit, self.last_checkpoint = view, limit, last_checkpoint
        self.paths: list[str] = []
        self.buffers: list[torch.Tensor] = []
        self.consecutive = self.skipped = 0

    def start_window(self) -> None:
        self.paths = []
        self.buffers = [b.detach().clone() for b in self.view.buffers()]

    def is_bad(self, mean_loss: float, step_applied: bool, fp16: bool) -> bool:
        """A step is bad when its loss is not finite, or its gradients were (the optimizer refused the step).
        Under fp16 a refused step with a finite loss is DeepSpeed's loss-scale overflow, not an error."""
        return not math.isfinite(mean_loss) or (not step_applied and not fp16)

    def bad_step(self, step: int, mean_loss: float, report: Callable[[str, int], None]) -> None:
        """Collective: undo the window's BatchNorm updates, report the videos, stop after `limit` in a row."""
        with torch.no_grad():
            for buffer, saved in zip(self.view.buffers(), self.buffers, strict=True):
                buffer.copy_(saved)
        self.consecutive += 1
        self.skipped += 1
        paths = [p for rank_paths in all_gather_objects(self.paths) for p in rank_paths]
        what = "loss" if not math.isfinite(mean_loss) else "gradient"
        report(f"step {step} skipped: non-finite {what} ({mean_loss}); videos: {' '.join(paths)}", self.skipped)
        if self.consecutive >= self.limit:
            raise UserError(
                f"{self.consecutive} consecutive steps with a non-finite loss or gradient (up to step {step}, "
                f"train.max_bad_steps={self.limit}); last good checkpoint: {self.last_good()}"
            )

    def good_step(self) -> None:
        self.consecutive = 0

    def last_good(self) -> str:
        latest = self.last_checkpoint()
        return str(latest) if latest is not None else "none (no checkpoint was written)"

    def check_finite(self, what: str, step: int) -> None:
        """Refuse to write `what` when a trainable tensor (parameter or buffer) is not finite."""
        state = self.view.state_dict()
        bad = [name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise UserError(
                f"not writing {what}: trainable tensors are not finite at step {step} "
                f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); last good checkpoint: {self.last_good()}"
            )
