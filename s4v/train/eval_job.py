"""`launch/eval.py`: evaluate the exported members under a path with multi-view averaging, write reports and
add each member's result to its own MLflow run. A run's `final/` (or a `checkpoints/step_*`) is one member;
a sweep's out_dir is every member it exported, scored on one frozen pass, and with `ensemble` also the mean
softmax of the best of them by selection metric (`s4v.train.ensemble`), from that same pass."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from s4v.config import Config, load_config
from s4v.core.errors import UserError
from s4v.data import build_loader
from s4v.data.config import parse_views
from s4v.data.loader import VideoLoader
from s4v.train import ensemble as ens
from s4v.train.checkpoint import atomic_write
from s4v.train.distributed import init_distributed
from s4v.train.layout import exported_members
from s4v.train.sweep_report import write_sweep_report
from s4v.train.tasks import Metrics, RecognitionTask, Task, make_task
from s4v.train.tracking import Tracker
from s4v.train.trained import DTYPES, default_dtype, load_members, member_run_id


def evaluate(
    path: str | Path,
    views: str = "1x1",
    overrides: list[str] | tuple[str, ...] = (),
    out: str | None = None,
    dtype: str | None = None,
    ensemble: int | None = None,
) -> list[Metrics]:
    """Collective: evaluate every exported member under `path` on the validation split with `views`
    (CROPSxCLIPS) in the compute dtype; reports go to `out` (default `<path>/eval_<views>`). `ensemble`: a
    sweep's out_dir only, also score the mean softmax of its `ensemble` best members by selection metric
    (`ensemble.json` and a section of the report's sweep.md)."""
    root = Path(path)
    selection = ens.select_ensemble(root, ensemble) if ensemble is not None else None
    exports, sweep_rows = exported_members(root)
    crops, clips = parse_views(views)
    run_overrides = [*overrides, f"data.test_crops={crops}", f"data.test_clips={clips}"]
    cfg = load_config(exports[0].final / "config.yaml", run_overrides)
    dist = init_distributed(cfg.train.threads_per_rank)
    compute = DTYPES[dtype or default_dtype(dist.device)]
    loader = build_loader(cfg.data, "val", dist.rank, dist.world_size, cfg.train.seed)
    model, cfgs, metas = load_members([e.final for e in exports], dist.device, compute, run_overrides)
    if cfg.model.task == "recognition" and (
        loader.num_classes != metas[0]["num_classes"] or list(loader.classes) != metas[0]["classes"]
    ):
        raise UserError(
            f"validation set has {loader.num_classes} classes, checkpoint {metas[0]['num_classes']}, or their "
            f"names differ: evaluate on the dataset {root} was trained on"
        )
    task = make_task(cfg, compute, dist.device)
    if selection is None:
        results = task.evaluate(model, loader)
    else:
        results, combined = _with_ensemble(task, model, loader, [e.name for e in exports], selection)
    if not dist.is_main:
        return results
    report_dir = Path(out) if out else root / f"eval_{crops}x{clips}"
    for export, member_cfg, meta, metrics in zip(exports, cfgs, metas, results, strict=True):
        metrics["checkpoint"] = str(export.final)
        member_dir = report_dir / export.report_subdir
        files = task.write_report(metrics, member_dir, "eval")
        print(f"[s4v] {export.label or f'{member_cfg.model.kind} {root}'}: {task.summary(metrics)}", flush=True)
        if sweep_rows is None:
            print(f"[s4v] report: {', '.join(str(f) for f in files)}", flush=True)
        _track(member_cfg, meta, task.tracked(metrics), metrics["views"], member_dir)
    if sweep_rows is not None:  # the sweep's table at these views; a failed member is listed with no score
        metric = next(iter(task.tracked(results[0])))
        scored = {e.name: task.tracked(m)[metric] for e, m in zip(exports, results, strict=True)}
        score = {r["name"]: scored.get(r["name"]) for r in sweep_rows}
        rows = [r | {"last": score[r["name"]], "best": score[r["name"]], "best_epoch": None} for r in sweep_rows]
        files = write_sweep_report(report_dir, rows, metric)
        if selection is not None:
            by_name = {e.name: m for e, m in zip(exports, results, strict=True)}
            _report_ensemble(task, report_dir, selection, combined, by_name)
        print(f"[s4v] report: {files[1]}", flush=True)
    return results


def _with_ensemble(
    task: RecognitionTask, model: torch.nn.Module, loader: VideoLoader, names: list[str], selection: ens.Selection
) -> tuple[list[Metrics], Metrics]:
    """Collective: each member's metrics (as `RecognitionTask.evaluate` gives them) and those of the selected
    members' mean softmax, from the same pass: the ensemble needs the members' probabilities, which the task's
    evaluation reduces to metrics. Sweeps are recognition only."""
    labels, probs = task.probabilities(model, loader)
    results = [task.metrics(labels, p, loader) for p in probs]
    mean = probs[[names.index(p.name) for p in selection.picks]].mean(axis=0)
    return results, task.metrics(labels, mean, loader) | {"members": [p.name for p in selection.picks]}


def _report_ensemble(
    task: Task, report_dir: Path, selection: ens.Selection, combined: Metrics, by_name: dict[str, Metrics]
) -> None:
    """Rank 0: the ensemble's own eval.json (as a member's), ensemble.json, its sweep.md section, the line."""
    task.write_report(combined, report_dir / ens.SUBDIR, "eval")
    doc = ens.report(selection, combined["views"], combined, by_name)
    atomic_write(report_dir / "ensemble.json", json.dumps(doc, indent=2).encode())
    md = report_dir / "sweep.md"
    atomic_write(md, (md.read_text() + "\n" + ens.section(selection, combined, by_name)).encode())
    print(f"[s4v] {ens.summary(selection, combined, by_name[selection.picks[0].name])}", flush=True)


def _track(cfg: Config, meta: dict[str, Any], metrics: dict[str, float], views: str, report_dir: Path) -> None:
    """Add the multi-view result to the member's own MLflow run (when the store still has it)."""
    run_id = member_run_id(meta)
    if not (cfg.tracking.enabled and run_id):
        return
    tracker = Tracker(
        True, cfg.tracking.uri, cfg.tracking.experiment, system_metrics=False, run_id=run_id, resume_only=True
    )
    prefix = f"eval_{views}"
    tracker.log_metrics({f"{prefix}/{k}": v for k, v in metrics.items()}, meta.get("step"))
    tracker.log_artifacts(report_dir, prefix)
    tracker.finish()
