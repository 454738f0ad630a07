"""The members of a training run: what the trainer keeps per member beside the shared pass.

Every run is a sweep of K members (`s4v.config` (sweeps); K = 1 without a `sweep` section). `Members` holds their
names, configs and trainable modules, the zero loss a stopped member contributes, their evaluation
history, failures and MLflow child runs, and writes their exports (`<out>/members/<name>/final/`, each a
normal export of that member's config) and the sweep report. A run without a sweep keeps its one member's
export in `<out>/final/` and tracks in its own MLflow run.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from s4v.config import MEMBERS_DIR, Member, is_sweep
from s4v.tracking import ChildRun, Tracker
from s4v.train import checkpoint as ckpt
from s4v.train.sweep_report import write_sweep_report
from s4v.train.tasks import Metrics, Task


class Members:
    """The K members of the run of `cfg` (`members`: its resolved sweep): `modules[k]` holds member k's
    trainable state (with one member: the whole trainable view)."""

    def __init__(self, cfg: Any, members: list[Member], model: nn.Module, view: nn.Module) -> None:
        self.sweep = is_sweep(cfg)
        self.list = members  # resolve_members(cfg), resolved once by the trainer
        self.names = [m.name for m in self.list]
        self.modules: list[nn.Module] = list(model.members) if hasattr(model, "members") else [view]
        self.history: list[list[dict[str, Any]]] = [[] for _ in self.list]
        self.failures: dict[int, str] = {}
        self.children: list[ChildRun | None] = [None] * len(self.list)
        self.grad_bad = torch.zeros(len(self.list), dtype=torch.bool)  # see guard_gradients

    def guard_gradients(self) -> None:
        """A sweep's members keep their non-finite gradients to themselves: a hook on each parameter notes a
        member whose gradient is not finite (`grad_bad`) and hands DeepSpeed zeros in its place, so
        DeepSpeed's overflow check over all members (bf16, ZeRO 1-2) never skips the others' step. Not
        with fp16, whose dynamic loss scale needs to see overflows (fp16 sweeps are refused)."""
        device = next(self.modules[0].parameters()).device
        self.grad_bad = torch.zeros(len(self), dtype=torch.bool, device=device)
        for k, module in enumerate(self.modules):
            for p in module.parameters():
                p.register_hook(partial(self._checked_grad, k))

    def _checked_grad(self, k: int, grad: torch.Tensor) -> torch.Tensor:
        self.grad_bad[k] |= ~torch.isfinite(grad).all()  # no host sync: read once per step
        return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)

    def __len__(self) -> int:
        return len(self.list)

    def zero_loss(self, k: int) -> torch.Tensor:
        """A loss of 0 that still reaches every parameter of member k, so DeepSpeed sees finite (zero)
        gradients for a member whose own loss is not finite or that has failed."""
        return sum(p.sum() for p in self.modules[k].parameters()) * 0.0

    def state(self) -> dict[str, Any]:
        """What a checkpoint's meta.json keeps of the members (names checked on resume)."""
        return {
            "names": self.names,
            "failures": {self.names[k]: why for k, why in self.failures.items()},
            "history": dict(zip(self.names, self.history, strict=True)),
            "mlflow_run_ids": [c.run_id if c else None for c in self.children],
        }

    def load_state(self, state: dict[str, Any] | None) -> list[str | None]:
        """Restore failures and history from a checkpoint's meta; returns the members' MLflow run ids."""
        if not state:
            return [None] * len(self)
        self.failures.clear()  # in place: the guard shares this dict
        self.failures.update({self.names.index(n): why for n, why in state["failures"].items()})
        self.history = [state["history"][n] for n in self.names]
        return list(state["mlflow_run_ids"])

    def start_tracking(self, tracker: Tracker, run_ids: list[str | None], fresh: bool) -> None:
        """One nested MLflow run per member of a sweep, with its overrides and resolved config as params."""
        if not self.sweep:
            return
        from s4v.config import flatten, to_dict

        for k, member in enumerate(self.list):
            child = ChildRun(tracker, member.name, run_ids[k])
            if fresh:
                child.log_params({"member": member.name, **flatten(to_dict(member.cfg))})
                child.log_params({f"override.{key}": v for key, v in member.overrides.items()})
            self.children[k] = child

    def tracker_of(self, k: int, parent: Tracker) -> Tracker | ChildRun:
        return self.children[k] or parent

    def fail(self, k: int) -> None:
        """Member k has failed (the guard recorded why): its MLflow run ends FAILED."""
        if self.children[k] is not None:
            self.children[k].finish("FAILED")

    def finish(self, status: str) -> None:
        """End every member's MLflow run still open (a stopped run: KILLED, resumable; a failed one: FAILED)."""
        for child in self.children:
            if child is not None and child.active:
                child.finish(status)

    def record_eval(self, task: Task, metrics: list[Metrics], epoch: int, step: int) -> None:
        for k, m in enumerate(metrics):
            if k not in self.failures:
                self.history[k].append({"epoch": epoch, "step": step, **task.tracked(m)})

    def member_dir(self, out: Path, k: int) -> Path:
        return out / MEMBERS_DIR / self.names[k]

    def export(self, out: Path, meta: dict[str, Any], step: int) -> list[Path | None]:
        """Rank 0: each member that has not failed as a normal `final/` of its own config."""
        finals: list[Path | None] = []
        for k, member in enumerate(self.list):
            if k in self.failures:
                finals.append(None)
                continue
            final = self.member_dir(out, k) / "final"
            extra = {"sweep_member": member.name, "sweep_overrides": member.overrides}
            finals.append(ckpt.export_trainable(self.modules[k], final, member.cfg, {**meta, **extra, "step": step}))
        return finals

    def report(self, out: Path, metric: str, steps: int) -> None:
        """Rank 0: sweep.json / sweep.md / sweep.png of all members, from their evaluation history."""
        rows = []
        for k, member in enumerate(self.list):
            history = [h for h in self.history[k] if h.get(metric) is not None]
            best = max(history, key=lambda h: h[metric], default=None)
            final = self.member_dir(out, k) / "final"
            rows.append(
                {
                    "name": member.name,
                    "overrides": member.overrides,
                    "trainable_params": sum(p.numel() for p in self.modules[k].parameters()),
                    "last": history[-1][metric] if history else None,
                    "best": best[metric] if best else None,
                    "best_epoch": best["epoch"] if best else None,
                    "failed": k in self.failures,
                    "failure": self.failures.get(k),
                    "steps": steps,
                    "export": str(final.relative_to(out)) if final.is_dir() else None,
                }
            )
        write_sweep_report(out, rows, metric)
