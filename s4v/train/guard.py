"""Never train on NaN: a member whose loss or gradient is not finite has its step skipped and counted, too many
in a row and it has failed, and no checkpoint is written with a non-finite tensor.

The optimizer refuses a member's update (`SkippingAdamW.refuse`: its loss was not finite, its gradients
were not, or it has failed), so the others step on. The guard holds one accumulation window (each member's
buffers at its start, the videos it read) and decides what a skipped step means: it undoes what the
window's forwards changed in that member's modules (BatchNorm running statistics), tells the member's
state, reports it, and fails the member after `train.max_bad_steps` in a row. The run ends (one line) when
every member has failed. DeepSpeed's own overflow checks (fp16, bf16, ZeRO) see all members at once: a step
they refuse is a skipped step of every member.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from s4v.core.errors import UserError
from s4v.train.distributed import all_gather_objects
from s4v.train.members import MemberSet


class NonFiniteGuard:
    """One accumulation window at a time: the members' buffers at its start and the videos it read."""

    def __init__(self, limit: int, last_checkpoint: Callable[[], Path | None]) -> None:
        self.limit, self.last_checkpoint = limit, last_checkpoint
        self.paths: list[str] = []
        self.buffers: list[list[torch.Tensor]] = []

    def start_window(self, members: MemberSet) -> None:
        self.paths = []
        self.buffers = [[b.detach().clone() for b in m.module.buffers()] for m in members]

    def bad_members(
        self, members: MemberSet, losses: Sequence[float], refused: set[int], step_applied: bool, fp16: bool
    ) -> list[int]:
        """Live members whose step was bad: a loss that is not finite, gradients the optimizer refused, or a
        step DeepSpeed refused. Under fp16 a refused step with finite losses is a loss-scale overflow, no error."""
        whole_step = not step_applied and not fp16
        return [k for k in members.live if not math.isfinite(losses[k]) or k in refused or whole_step]

    def restore(self, member: nn.Module, k: int) -> None:
        """Undo the window's BatchNorm updates of member k (its step was skipped, or it has failed)."""
        with torch.no_grad():
            for buffer, saved in zip(member.buffers(), self.buffers[k], strict=True):
                buffer.copy_(saved)

    def after_step(
        self, members: MemberSet, step: int, bad: Sequence[int], losses: Sequence[float], report: Callable[[str], None]
    ) -> list[int]:
        """Collective: skip `bad` members' step and report the window's videos; the others had a good step.
        Reports and returns the members that have now failed; raises when no member is left."""
        for k in members.failed:  # a failed member's forwards still ran: keep its last good statistics
            self.restore(members[k].module, k)
        paths = [p for rank_paths in all_gather_objects(self.paths) for p in rank_paths] if bad else []
        failed = []
        for k in range(len(members)):
            member = members[k]
            if k not in bad:
                member.state.good_step()
                continue
            self.restore(member.module, k)
            in_a_row = member.state.bad_step()
            what = "loss" if not math.isfinite(losses[k]) else "gradient"
            who = f"{member.label}: " if member.label else ""
            report(f"{who}step {step} skipped: non-finite {what} ({losses[k]}); videos: {' '.join(paths)}")
            if in_a_row >= self.limit:
                member.fail(f"non-finite loss or gradient at {in_a_row} consecutive steps, up to step {step}")
                failed.append(k)
        if not members.live:
            last = members[failed[-1]] if failed else members[0]
            raise UserError(members.layout.failure(step, self.limit, last.state.bad_in_a_row, self.last_good()))
        for k in failed:
            member = members[k]
            report(f"{member.label} failed: {member.state.failure}; {len(members.live)} member(s) train on")
        return failed

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
