"""The members of a training run: one object per side network trained on the shared frozen pass.

Every run is a set of K members (`s4v.config` resolves a `sweep` section; K = 1 without one), each a
`s4v.train.member.Member`. `MemberSet` is what the trainer talks to; it saves and restores the members' states
by member name (`state_dict` / `load_state_dict`).

A member culled by successive halving, or one that failed, leaves the pass: the model is rebuilt without it
(`s4v.train.rebuild`). `MemberSet` indexes the members still in the pass, in the model's order (the order of
its losses, parameter groups and evaluation results); `everyone` lists all of them in sweep order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence, Set
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from s4v.config import MemberSpec, flatten, to_dict
from s4v.train.layout import RunLayout
from s4v.train.member import Member, param_count
from s4v.train.sweep_report import write_sweep_report
from s4v.train.tasks import Metrics, Task
from s4v.train.tracking import Tracker

STATE_VERSION = 2  # meta["members"]: {"version": 2, "states": {name: MemberState}}; version 1 had lists


class MemberSet:
    """The run's members; told what happened, it keeps each member's state. Indexing, `len` and iteration
    cover the members in the pass, in the model's order."""

    def __init__(
        self, layout: RunLayout, specs: Sequence[MemberSpec], modules: Sequence[nn.Module], gone: Set[str] = frozenset()
    ) -> None:
        """`specs`: every member, in sweep order; `modules`: those of the members in the pass, in that order
        (`gone`: the members a resumed run's checkpoint says had left, `left_names`)."""
        self.layout = layout
        self.everyone = [Member(s, None, layout) for s in specs]
        self.members = [m for m in self.everyone if m.name not in gone]
        self._place(modules)
        self.grad_bad = torch.zeros(len(self.members), dtype=torch.bool)  # see guard_gradients
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    @staticmethod
    def left_names(state: dict[str, Any] | None) -> set[str]:
        """The members that had left the pass by a checkpoint's member states (`state_dict`)."""
        return {name for name, st in _states(state).items() if st.get("left")}

    def _place(self, modules: Sequence[nn.Module]) -> None:
        for m, module in zip(self.members, modules, strict=True):
            m.move_to(module)

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[Member]:
        return iter(self.members)

    def __getitem__(self, k: int) -> Member:
        return self.members[k]

    def sweep_index(self, k: int) -> int:
        """The sweep-order index of the member at model index `k` (decisions are kept in sweep order)."""
        return self.everyone.index(self.members[k])

    def leave(self, going: dict[int, dict[str, Any]], modules: Sequence[nn.Module]) -> None:
        """The members at model indices `going` leave the pass (each with its `left` record); the others now
        live in `modules`, the rebuilt model's, in order."""
        for k, left in going.items():
            self.members[k].leave(left)
        self.members = [m for k, m in enumerate(self.members) if k not in going]
        self._place(modules)
        for handle in self._hooks:  # the old modules' hooks go with them
            handle.remove()
        self._hooks = []
        self.guard_gradients()

    @property
    def failed(self) -> set[int]:
        return {k for k, m in enumerate(self.members) if m.failed}

    @property
    def live(self) -> list[int]:
        return [k for k, m in enumerate(self.members) if not m.failed]

    def guard_gradients(self) -> None:
        """Where the layout asks for it (a sweep), a hook on each parameter notes a member whose gradient is not
        finite (`grad_bad`) and hands DeepSpeed zeros in its place, so DeepSpeed's overflow check over all
        members (bf16, ZeRO 1-2) never skips the others' step. Not with fp16 (refused for sweeps), whose
        dynamic loss scale needs to see overflows."""
        if not self.layout.guards_gradients:
            return
        device = next(self.members[0].module.parameters()).device
        self.grad_bad = torch.zeros(len(self), dtype=torch.bool, device=device)
        for k, member in enumerate(self.members):
            for p in member.module.parameters():
                self._hooks.append(p.register_hook(partial(self._checked_grad, k)))

    def _checked_grad(self, k: int, grad: torch.Tensor) -> torch.Tensor:
        self.grad_bad[k] |= ~torch.isfinite(grad).all()  # no host sync: read once per step
        return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)

    def total_loss(self, losses: torch.Tensor) -> torch.Tensor:
        """The sum to backpropagate: a member's non-finite loss (or a failed member's) is replaced by a zero
        one, so its gradients are zeros, never NaN, and the members' backward passes stay apart."""
        finite = torch.isfinite(losses).tolist()
        return sum(losses[k] if finite[k] and not m.failed else m.zero_loss() for k, m in enumerate(self.members))

    def lrs(self, optimizer: torch.optim.Optimizer) -> list[float]:
        """Each member's lr: its last parameter group's (retrieval's one member: the new modules, after CLIP's)."""
        lrs = {group["member"]: group["lr"] for group in optimizer.param_groups}
        return [lrs[k] for k in range(len(self))]

    # -- checkpoints ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "states": {m.name: m.state.state_dict() for m in self.everyone}}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore every member's state by name; reads the first format too (parallel lists and name maps,
        without skipped-step counts, written before members were objects)."""
        if not state:
            return
        states = _states(state)
        for m in self.everyone:
            m.state.load_state_dict(states[m.name])

    # -- tracking ------------------------------------------------------------------------------------------

    def start_tracking(self, run: Tracker, fresh: bool) -> None:
        """Rank 0: each member's tracker (the layout says which); a new child run logs its overrides and config."""
        for m in self.members:
            m.attach(self.layout.tracker(run, m.name, m.state.mlflow_run_id))
            if fresh and m.tracker is not run:
                m.tracker.log_params({"member": m.name, **flatten(to_dict(m.cfg))})
                m.tracker.log_params({f"override.{key}": v for key, v in m.overrides.items()})

    def finish(self, status: str) -> None:
        """End every member's own MLflow run still open (a stopped run: KILLED, resumable; a failed one: FAILED)."""
        for m in self.members:
            if m.tracker is not None and m.tracker.nested and m.tracker.active:
                m.tracker.finish(status)

    # -- evaluation and results ----------------------------------------------------------------------------

    def record_eval(self, task: Task, results: Sequence[Metrics], epoch: int, step: int, is_main: bool) -> None:
        """Every rank: each live member's history; rank 0 also writes its report, prints and tracks it."""
        for m, metrics in zip(self.members, results, strict=True):
            if m.failed:
                continue
            m.state.history.append({"epoch": epoch, "step": step, **task.tracked(metrics)})
            if is_main:
                task.write_report(metrics, m.eval_dir, f"epoch_{epoch:03d}")
                who = f" {m.name}" if m.label else ""
                print(f"[s4v] eval after epoch {epoch}{who}: {task.summary(metrics)}", flush=True)
                m.track({f"val/{key}": v for key, v in task.tracked(metrics).items()}, step)

    def curves(self, losses: Sequence[float], lrs: Sequence[float]) -> dict[str, float]:
        """A sweep's per-member loss and lr for metrics.jsonl (a plain run's are the run's own)."""
        if not self.layout.writes_report:
            return {}
        curves: dict[str, float] = {"members_in_pass": len(self.members)}
        for m, loss, lr in zip(self.members, losses, lrs, strict=True):
            curves[f"loss/{m.name}"], curves[f"lr/{m.name}"] = loss, lr
        return curves

    def track_curves(self, losses: Sequence[float], lrs: Sequence[float], step: int) -> None:
        """Rank 0: each member's loss and lr in its own MLflow run (a plain run's are the run's step metrics)."""
        for m, loss, lr in zip(self.members, losses, lrs, strict=True):
            if m.tracker is not None and m.tracker.nested and math.isfinite(loss):
                m.track({"train/loss": loss, "train/lr": lr}, step)

    def export(self, task: Task, results: Sequence[Metrics] | None, run_meta: dict[str, Any], step: int) -> dict:
        """Rank 0: each member that has not failed as a `final/` with its last evaluation; returns the
        headline of `result.json`."""
        headline = {}
        for k, m in enumerate(self.members):
            if m.failed:
                continue
            final = m.export(run_meta, step)
            metrics = results[k] if results else None
            if metrics is not None:
                task.write_report(metrics, final, "eval")
            headline[m.name] = task.headline(metrics)
            if m.tracker is not None:
                m.tracker.log_artifacts(final, "final")
                if m.tracker.nested:
                    m.tracker.finish()
        return self.layout.headline(headline)

    def report(self, metric: str, steps: int, halving: dict[str, Any] | None = None) -> list[Path]:
        """Rank 0: a sweep's sweep.json / sweep.md / sweep.png from the members' evaluation history."""
        if not self.layout.writes_report:
            return []
        out, rows = self.layout.out, []
        for m in self.everyone:
            # validation entries only: a halving rung's scores are on the selection split (`halving`)
            history = [h for h in m.state.history if h.get(metric) is not None and "rung" not in h]
            best = max(history, key=lambda h: h[metric], default=None)
            rows.append(
                {
                    "name": m.name,
                    "overrides": m.overrides,
                    "trainable_params": m.state.left["params"] if m.state.left else param_count(m.module),
                    "last": history[-1][metric] if history else None,
                    "best": best[metric] if best else None,
                    "best_epoch": best["epoch"] if best else None,
                    "failed": m.failed,
                    "failure": m.state.failure,
                    "left": m.state.left,
                    "steps": steps,
                    "export": str(m.final_dir.relative_to(out)) if m.final_dir.is_dir() else None,
                }
            )
        return [p for p in write_sweep_report(out, rows, metric, halving=halving) if p is not None]


def _states(state: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Member states by name from a checkpoint's meta, either format."""
    if not state:
        return {}
    return (state if state.get("version") == STATE_VERSION else _from_v1(state))["states"]


def _from_v1(state: dict[str, Any]) -> dict[str, Any]:
    """The first meta format: {"names": [...], "failures": {name: why}, "history": {name: [...]},
    "mlflow_run_ids": [...], "bad_in_a_row": [...]} (skipped steps were not saved: they restart at 0)."""
    names = state["names"]
    in_a_row = state.get("bad_in_a_row") or [0] * len(names)
    return {
        "states": {
            name: {
                "bad_in_a_row": in_a_row[k],
                "failure": state["failures"].get(name),
                "history": state["history"][name],
                "mlflow_run_id": state["mlflow_run_ids"][k],
            }
            for k, name in enumerate(names)
        }
    }
