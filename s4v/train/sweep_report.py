"""The report of a sweep: sweep.json (every member), sweep.md (a table) and sweep.png (a plot) in the run's
out dir, rewritten after each evaluation and at the end.

The rows are cleaned once (non-finite floats become None) and every file is drawn from the cleaned rows,
so the files cannot disagree. Each file is replaced atomically: a run killed mid-write leaves the
previous report, never half a file.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from s4v.train.checkpoint import atomic_write

MISSING = "–"  # a table cell with no value


def write_sweep_report(
    out_dir: Path,
    rows: list[dict[str, Any]],
    metric: str,
    higher_is_better: bool = True,
    halving: dict[str, Any] | None = None,
) -> tuple[Path, Path, Path | None]:
    """Write <out_dir>/sweep.json, sweep.md and sweep.png; returns the three paths (png None when nothing to plot).

    `rows`: one dict per member, in member order, with name, overrides (dotted key -> value),
    trainable_params, last, best, best_epoch, failed, failure, steps and export (relative to out_dir).
    Metric values are fractions; the best member is the non-failed one with the best `best`. `halving`: a
    halving sweep's plan and decisions (`HalvingPlan.summary`), shown rung by rung."""
    out_dir.mkdir(parents=True, exist_ok=True)
    members = [_finite(row) for row in rows]
    best = best_member(members, higher_is_better)
    doc = {
        "metric": metric,
        "higher_is_better": higher_is_better,
        "best_member": best["name"] if best else None,
        "members": members,
        "halving": halving,
    }
    js, md, png = out_dir / "sweep.json", out_dir / "sweep.md", out_dir / "sweep.png"
    # allow_nan=False: a non-finite float that slipped past _finite fails here, not in a reader.
    atomic_write(js, json.dumps(doc, indent=2, allow_nan=False).encode())
    plotted = bool(members)
    if plotted:
        atomic_write(png, plot_sweep(members, metric, higher_is_better, best))
    text = markdown(members, metric, higher_is_better, best, png.name if plotted else None)
    atomic_write(md, (text + halving_section(members, halving)).encode())
    return js, md, png if plotted else None


def _finite(value: Any) -> Any:
    """`value` with every NaN/inf float (at any depth) replaced by None; the input is left untouched."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def best_member(members: list[dict[str, Any]], higher_is_better: bool) -> dict[str, Any] | None:
    """The non-failed member with the best `best` (the first of equals), or None if no member qualifies."""
    scored = [m for m in members if not m["failed"] and m["best"] is not None]
    if not scored:
        return None
    pick = max if higher_is_better else min
    return pick(scored, key=lambda m: m["best"])  # max/min keep the first of equal keys: member order wins


def swept_keys(members: list[dict[str, Any]]) -> list[str]:
    """Every dotted key in any member's overrides, in order of first appearance."""
    return list(dict.fromkeys(k for m in members for k in m["overrides"]))


def _value(value: Any) -> str:
    """A swept value, compactly: floats with :g (3e-04 stays 0.0003), the rest as str."""
    if value is None:
        return MISSING
    return f"{value:g}" if isinstance(value, float) else str(value)


def _percent(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2%}"


def _cell(text: str) -> str:
    """A table cell: a pipe or a line break in a failure reason would break the row."""
    return " ".join(text.split()).replace("|", "\\|")


def _status(member: dict[str, Any]) -> str:
    left = member.get("left") or {}
    if left.get("why") == "culled":
        return f"culled at rung {left['rung'] + 1} (step {left['step']})"
    return f"failed: {member['failure'] or 'unknown reason'}" if member["failed"] else "ok"


def _best_cell(member: dict[str, Any]) -> str:
    if member["best"] is None:
        return MISSING
    epoch = member["best_epoch"]
    return _percent(member["best"]) + (f" ({epoch})" if epoch is not None else "")


def _row(member: dict[str, Any], keys: list[str], is_best: bool) -> str:
    name = f"**{member['name']}**" if is_best else member["name"]
    export = f"`{member['export']}`" if member["export"] else MISSING
    cells = [
        name,
        *(_value(member["overrides"].get(k)) for k in keys),
        f"{member['trainable_params']:,}",
        _percent(member["last"]),
        _best_cell(member),
        _status(member),
        export,
    ]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _verdict(best: dict[str, Any] | None, metric: str, order: str) -> str:
    if best is None:
        return f"No best member: no member that did not fail has a {metric} yet."
    epoch = f" at epoch {best['best_epoch']}" if best["best_epoch"] is not None else ""
    return f"Best member (best {metric}, {order}): **{best['name']}**, {_percent(best['best'])}{epoch}."


def markdown(
    members: list[dict[str, Any]], metric: str, higher_is_better: bool, best: dict[str, Any] | None, plot: str | None
) -> str:
    """sweep.md: one table row per member (the best in bold), the best member named under the table."""
    keys = swept_keys(members)
    order = "higher is better" if higher_is_better else "lower is better"
    failed = sum(m["failed"] for m in members)
    culled = sum((m.get("left") or {}).get("why") == "culled" for m in members)
    header = ["member", *keys, "trainable params", f"last {metric}", f"best {metric} (epoch)", "status", "export"]
    lines = [
        f"# Sweep of {len(members)} member(s) on {metric}",
        "",
        f"{len(members) - failed - culled} ok, {culled} culled, {failed} failed; {metric} in percent, {order}.",
        "",
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
        *(_row(m, keys, m is best) for m in members),
        "",
        _verdict(best, metric, order),
        "",
    ]
    if plot:
        lines += [f"![sweep]({plot})", ""]
    return "\n".join(lines)


def _numeric_key(members: list[dict[str, Any]]) -> str | None:
    """The swept key if exactly one is swept and every member has a number for it (the x of a line plot)."""
    keys = swept_keys(members)
    if len(keys) != 1:
        return None
    values = [m["overrides"].get(keys[0]) for m in members]
    # bool is an int, but True/False on an x axis is a category, not a scale.
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    return keys[0] if numeric else None


def plot_sweep(
    members: list[dict[str, Any]], metric: str, higher_is_better: bool, best: dict[str, Any] | None
) -> bytes:
    """sweep.png as bytes: the metric against the swept value (one numeric key) or a bar per member."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    key = _numeric_key(members)
    fig, ax = plt.subplots(figsize=(7, 4) if key else (7, 1.5 + 0.4 * len(members)))
    if key:
        _plot_lines(ax, members, key)
        ax.set_ylabel(metric)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    else:
        _plot_bars(ax, members, best)
        ax.set_xlabel(f"best {metric}")
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    order = "higher is better" if higher_is_better else "lower is better"
    ax.set_title(f"sweep: {metric} ({order})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _plot_lines(ax: Any, members: list[dict[str, Any]], key: str) -> None:
    """Last and best metric of the members that did not fail against `key`; failed ones as x at the bottom."""
    ok = sorted((m for m in members if not m["failed"]), key=lambda m: m["overrides"][key])
    for field, style in (("last", "o-"), ("best", "s--")):
        points = [(m["overrides"][key], m[field]) for m in ok if m[field] is not None]
        ax.plot([x for x, _ in points], [y for _, y in points], style, label=field)
    failed = [m["overrides"][key] for m in members if m["failed"]]
    if failed:
        # y in axes coordinates: the bottom of the axis, whatever the metric's range.
        ax.plot(
            failed,
            [0] * len(failed),
            "x",
            color="red",
            markersize=10,
            mew=2,
            clip_on=False,
            transform=ax.get_xaxis_transform(),
            label="failed",
        )
    xs = [m["overrides"][key] for m in members]
    if min(xs) > 0 and max(xs) / min(xs) > 20:  # a learning-rate-like range: even spacing in log
        ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.legend()


def _plot_bars(ax: Any, members: list[dict[str, Any]], best: dict[str, Any] | None) -> None:
    """A horizontal bar of best metric per member, first member on top, the best member in orange; a failed
    member is an empty red outline (as long as its best, if it had one, else the longest bar) labelled failed."""
    top = max((m["best"] for m in members if m["best"] is not None), default=1.0) or 1.0
    for i, m in enumerate(members):
        if m["failed"]:
            width = m["best"] if m["best"] is not None else top
            ax.barh(i, width, fill=False, edgecolor="red", linestyle="--")
            ax.text(0.01 * top, i, "failed", color="red", va="center", fontsize=8)
        else:
            width = m["best"] or 0.0
            ax.barh(i, width, color="tab:orange" if m is best else "tab:blue")
            ax.text(width, i, " " + _percent(m["best"]), va="center", fontsize=8)
    ax.set_yticks(range(len(members)), [m["name"] for m in members])
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.2)  # room for the value labels right of the bars


def halving_section(members: list[dict[str, Any]], halving: dict[str, Any] | None) -> str:
    """sweep.md's halving part: each rung's scores on the selection split, who went on, and the member the last
    rung selected with its validation figure beside its selection score."""
    if not halving or not halving["decisions"]:
        return ""
    decisions, metric, split = halving["decisions"], halving["metric"], halving["select"]
    header = ["member", *(f"rung {d['rung'] + 1} (step {d['step']})" for d in decisions), "status", "val (last)"]
    lines = [
        f"## Successive halving (eta {halving['eta']}) on {split} {metric}",
        "",
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
    ]
    for k, m in enumerate(members):
        cells = []
        for d in decisions:
            score = dict(zip(d["live"], d["scores"], strict=True)).get(k, MISSING) if k in d["live"] else MISSING
            mark = "" if k not in d["live"] else (" →" if k in d["kept"] else " ✗")
            cells.append(_percent(score) + mark if score != MISSING else MISSING)
        lines.append("| " + " | ".join(_cell(c) for c in [m["name"], *cells, _status(m), _percent(m["last"])]) + " |")
    costs = [_units(d.get("cost")) for d in decisions]
    lines.append("| " + " | ".join(["*cost so far, single-run units*", *costs, "", ""]) + " |")
    last = decisions[-1]
    chosen = max(last["kept"], key=lambda k: _finite(dict(zip(last["live"], last["scores"], strict=True))[k]) or 0)
    score = dict(zip(last["live"], last["scores"], strict=True))[chosen]
    lines += [
        "",
        f"Selected at the last rung: **{members[chosen]['name']}**, {split} {metric} {_percent(score)}; "
        f"its validation {metric}: {_percent(members[chosen]['last'])}. → went on, ✗ culled.",
    ]
    lines += [
        "",
        f"Cost of the run so far: {_units(halving.get('cost'))} single-run units (1 = the base config alone, without "
        "the members' overrides, over the whole schedule; counted FLOPs).",
    ]
    if halving.get("note"):
        lines += ["", f"Note: {halving['note']}."]
    return "\n".join(lines) + "\n"


def _units(cost: float | None) -> str:
    return MISSING if cost is None else f"{cost:.3f}"
