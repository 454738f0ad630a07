"""Never train on NaN: a member whose loss or gradient is not finite has its step skipped and counted, too many
in a row and it has failed, and no checkpoint is written with a non-finite tensor.

Every run is a sweep of K members (K = 1 without one). The optimizer refuses a member's update
(`engine.SkippingAdamW`: its loss was not finite, its gradients were not, or it has failed), so the
others step on; the guard decides what a skipped step means, undoes what the window's forwards changed in
that member's modules (BatchNorm running statistics) and reports it. With one member, its failure ends the
run (a one-line error); in a sweep a failed member is marked and the others train on, and the run ends only
when every member has failed. DeepSpeed's own overflow checks (fp16, bf16, ZeRO) see all members at once:
a step they refuse is a skipped step of every member.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from s4v.errors import UserError
from s4v.train.distributed import all_gather_objects


class NonFiniteGuard:
    """Per accumulation window: each member's buffers at its start and the videos it read."""

    def __init__(
        self, members: Sequence[nn.Module], names: Sequence[str], limit: int, last_checkpoint: Callable[[], Path | None]
    ) -> None:
        self.members, self.names, self.limit, self.last_checkpoint = list(members), list(names), limit, last_checkpoint
        self.paths: list[str] = []
        self.buffers: list[list[torch.Tensor]] = []
        self.consecutive = [0] * len(self.members)
        self.skipped = [0] * len(self.members)
        self.failed: dict[int, str] = {}  # member -> why it stopped

    def start_window(self) -> None:
        self.paths = []
        self.buffers = [[b.detach().clone() for b in m.buffers()] for m in self.members]

    def bad_members(self, losses: Sequence[float], refused: set[int], step_applied: bool, fp16: bool) -> list[int]:
        """Members whose step was bad: a loss that is not finite, gradients the optimizer refused, or a step
        DeepSpeed refused. Under fp16 a refused step with finite losses is a loss-scale overflow, no error."""
        whole_step = not step_applied and not fp16
        return [
            k
            for k, loss in enumerate(losses)
            if k not in self.failed and (not math.isfinite(loss) or k in refused or whole_step)
        ]

    def restore(self, member: int) -> None:
        """Undo the window's BatchNorm updates of `member` (its step was skipped, or it has failed)."""
        with torch.no_grad():
            for buffer, saved in zip(self.members[member].buffers(), self.buffers[member], strict=True):
                buffer.copy_(saved)

    def bad_step(
        self, step: int, bad: Sequence[int], losses: Sequence[float], report: Callable[[str], None]
    ) -> list[int]:
        """Collective: skip `bad` members' step, report the videos; returns the members that have now failed.
        Raises when the run has no member left (with one member: as soon as it fails)."""
        paths = [p for rank_paths in all_gather_objects(self.paths) for p in rank_paths]
        failed = []
        for k in bad:
            self.restore(k)
            self.consecutive[k] += 1
            self.skipped[k] += 1
            what = "loss" if not math.isfinite(losses[k]) else "gradient"
            who = "" if len(self.members) == 1 else f"member {self.names[k]}: "
            report(f"{who}step {step} skipped: non-finite {what} ({losses[k]}); videos: {' '.join(paths)}")
            if self.consecutive[k] >= self.limit:
                self.failed[k] = (
                    f"non-finite loss or gradient at {self.consecutive[k]} consecutive steps, up to step {step}"
                )
                failed.append(k)
        if len(self.failed) < len(self.members):
            return failed
        if len(self.members) == 1:
            raise UserError(
                f"{self.consecutive[0]} consecutive steps with a non-finite loss or gradient (up to step {step}, "
                f"train.max_bad_steps={self.limit}); last good checkpoint: {self.last_good()}"
            )
        raise UserError(
            f"every member of the sweep failed (the last at step {step}: train.max_bad_steps={self.limit} "
            f"consecutive non-finite steps); last good checkpoint: {self.last_good()}"
        )

    def good_steps(self, good: Sequence[int]) -> None:
        for k in good:
            self.consecutive[k] = 0

    def last_good(self) -> str:
        latest = self.last_checkpoint()
        return str(latest) if latest is not None else "none (no checkpoint was written)"

    def check_finite(self, view: nn.Module, what: str, step: int) -> None:
        """Refuse to write `what` when a trainable tensor (parameter or buffer) is not finite."""
        state = view.state_dict()
        bad = [name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise UserError(
                f"not writing {what}: trainable tensors are not finite at step {step} "
                f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); last good checkpoint: {self.last_good()}"
            )
