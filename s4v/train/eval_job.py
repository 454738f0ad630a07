"""`launch/eval.py`: evaluate the exported members under a path with multi-view averaging, write reports and
add each member's result to its own MLflow run. A run's `final/` (or a `checkpoints/step_*`) is one member;
a sweep's out_dir is every member it exported, scored on one frozen pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from s4v.config import Config, load_config
from s4v.core.errors import UserError
from s4v.data import build_loader
from s4v.data.config import parse_views
from s4v.train.distributed import init_distributed
from s4v.train.layout import exported_members
from s4v.train.sweep_report import write_sweep_report
from s4v.train.tasks import Metrics, make_task
from s4v.train.tracking import Tracker
from s4v.train.trained import DTYPES, default_dtype, load_members, member_run_id


def evaluate(
    path: str | Path,
    views: str = "1x1",
    overrides: list[str] | tuple[str, ...] = (),
    out: str | None = None,
    dtype: str | None = None,
) -> list[Metrics]:
    """Collective: evaluate every exported member under `path` on the validation split with `views`
    (CROPSxCLIPS) in the compute dtype; reports go to `out` (default `<path>/eval_<views>`)."""
    root = Path(path)
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
    results = task.evaluate(model, loader)
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
        print(f"[s4v] report: {files[1]}", flush=True)
    return results


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
