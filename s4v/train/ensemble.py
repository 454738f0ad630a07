"""`launch/eval.py --checkpoint <sweep root> --ensemble N`: which members to average, and how the result is shown.

The N best exported members by selection metric are read from the sweep's own `sweep.json`. A halving sweep
ranks on the selection split its rungs scored: a member counts by the latest rung it took part in (survivors
of later rungs above members culled earlier), then by its score at that rung, then by member order, the rule
the rungs themselves applied. A sweep without a halving decision ranks by each member's best validation
metric during training, which the evaluation then reports on that same split: the figures are optimistic.

Plain Python, no torch: `launch/eval.py` checks the request here before anything heavy is imported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s4v.config import is_sweep_root
from s4v.core.errors import UserError

SUBDIR = "ensemble"  # the ensemble's own eval.json and confusion plot, beside the members' report directories
METRICS = ("top1", "top5", "mean_class_accuracy")
LABELS = {"top1": "top-1", "top5": "top-5", "mean_class_accuracy": "mean-class"}  # as the members' lines say


@dataclass(frozen=True)
class Pick:
    """One member as the selection saw it."""

    name: str
    score: float | None  # None: a non-finite selection score (saved as null), ranked last
    rung: int | None  # the latest halving rung it was scored at (None: ranked on validation)


@dataclass(frozen=True)
class Selection:
    picks: list[Pick]  # best first
    basis: str  # what the members were ranked on, for the report
    note: str | None  # why the reported figures are optimistic, where they are


def rank_members(doc: dict[str, Any]) -> Selection:
    """Every exported member of a sweep that has a selection score, best first (`doc`: its `sweep.json`)."""
    members, halving = doc["members"], doc.get("halving")
    exported = [k for k, m in enumerate(members) if m["export"] is not None]
    if halving and halving["decisions"]:
        latest: dict[int, tuple[int, float | None]] = {}
        for d in sorted(halving["decisions"], key=lambda d: d["rung"]):  # a later rung overwrites an earlier
            latest |= {k: (d["rung"], s) for k, s in zip(d["live"], d["scores"], strict=True)}
        # Halving metrics are all accuracies: higher is better.
        ranked = sorted(
            (k for k in exported if k in latest),
            key=lambda k: (-latest[k][0], latest[k][1] is None, -(latest[k][1] or 0.0), k),
        )
        picks = [Pick(members[k]["name"], latest[k][1], latest[k][0]) for k in ranked]
        basis = f"{halving['select']} {halving['metric']} at the latest rung each member reached"
        return Selection(picks, basis, halving.get("note"))
    sign = -1.0 if doc["higher_is_better"] else 1.0
    ranked = sorted(
        (k for k in exported if members[k]["best"] is not None), key=lambda k: (sign * members[k]["best"], k)
    )
    note = (
        "the members were selected by their validation figures during training and are reported on validation "
        "here: the ensemble's and the best member's figures are optimistic"
    )
    return Selection(
        [Pick(members[k]["name"], members[k]["best"], None) for k in ranked], f"best val {doc['metric']}", note
    )


def select_ensemble(root: Path, n: int) -> Selection:
    """The `n` best members of the sweep at `root` (best first); one-line errors for what cannot be asked."""
    if not is_sweep_root(root):
        raise UserError(f"--ensemble: --checkpoint {str(root)!r} is not a sweep's out_dir (sweep.json and members/)")
    if n < 1:
        raise UserError(f"--ensemble {n}: average at least one member")
    doc = json.loads((root / "sweep.json").read_text())
    selection = rank_members(doc)
    exported = sum(m["export"] is not None for m in doc["members"])
    if not selection.picks:
        raise UserError(
            f"--ensemble: {root} has no selection scores (no halving rung decided and no validation "
            "during training: set train.eval_every_epochs)"
        )
    if n > len(selection.picks):
        scored = "" if len(selection.picks) == exported else f", {len(selection.picks)} of them with a selection score"
        raise UserError(f"--ensemble {n}: the sweep exported {exported} member(s){scored}")
    return Selection(selection.picks[:n], selection.basis, selection.note)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}"


def _figures(metrics: dict[str, Any]) -> str:
    return "  ".join(f"{LABELS[k]} {_percent(metrics[k])}" for k in METRICS)


def summary(selection: Selection, ensemble: dict[str, Any], best: dict[str, Any]) -> str:
    """The printed line: the ensemble beside the best single member by the same selection."""
    names = ", ".join(p.name for p in selection.picks)
    return (
        f"ensemble of {len(selection.picks)} ({names}; by {selection.basis}): {_figures(ensemble)}  |  "
        f"best member {selection.picks[0].name}: {_figures(best)}"
    )


def report(selection: Selection, views: str, ensemble: dict[str, Any], members: dict[str, dict[str, Any]]) -> dict:
    """`ensemble.json`: the picked members with their selection scores, the ensemble's figures and the best
    member's (`members`: each picked member's metrics by name)."""
    best = selection.picks[0].name
    return {
        "views": views,
        "basis": selection.basis,
        "note": selection.note,
        "members": [{"name": p.name, "score": p.score, "rung": p.rung} for p in selection.picks],
        "ensemble": {k: ensemble[k] for k in METRICS},
        "best_member": {"name": best, **{k: members[best][k] for k in METRICS}},
    }


def section(selection: Selection, ensemble: dict[str, Any], members: dict[str, dict[str, Any]]) -> str:
    """sweep.md's ensemble part: the ensemble's row above each picked member's."""
    header = ["", "selection score", *LABELS.values()]
    lines = [
        f"## Ensemble of the {len(selection.picks)} best member(s) by {selection.basis}",
        "",
        "The mean of their softmax probabilities, on one frozen pass; below it each member, the best first.",
        "",
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
        "| **ensemble** | – | " + " | ".join(f"**{_percent(ensemble[k])}**" for k in METRICS) + " |",
    ]
    for p in selection.picks:
        where = f" (rung {p.rung + 1})" if p.rung is not None else ""
        name = f"{p.name} (best)" if p is selection.picks[0] else p.name
        cells = [name, _percent(p.score) + where, *(_percent(members[p.name][k]) for k in METRICS)]
        lines.append("| " + " | ".join(cells) + " |")
    if selection.note:
        lines += ["", f"Note: {selection.note}."]
    return "\n".join(lines) + "\n"
