"""`launch/eval.py`: rebuild the model of a checkpoint, evaluate it with multi-view averaging, write a report;
on a sweep's out_dir, every member at once on one frozen pass."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from s4v.config import Config, load_config
from s4v.data import build_loader
from s4v.data.config import parse_views
from s4v.errors import UserError
from s4v.infer import DTYPES, default_dtype, load_trained
from s4v.tracking import Tracker
from s4v.train.build import backbone_fingerprint, build_model, check_fingerprint
from s4v.train.checkpoint import load_trainable, read_meta
from s4v.train.distributed import init_distributed
from s4v.train.engine import TrainableView, prepare_for_dtype
from s4v.train.sweep_report import write_sweep_report
from s4v.train.tasks import make_task


def evaluate_checkpoint(
    checkpoint: str | Path,
    views: str = "1x1",
    overrides: list[str] | tuple[str, ...] = (),
    out: str | None = None,
    dtype: str | None = None,
) -> dict[str, Any]:
    """Collective: evaluate the trainable state in `checkpoint` (an export or a training checkpoint) on the
    validation split with `views` (CROPSxCLIPS) in the compute dtype that training uses the same way."""
    directory = Path(checkpoint)
    crops, clips = parse_views(views)
    run_overrides = [*overrides, f"data.test_crops={crops}", f"data.test_clips={clips}"]
    meta = read_meta(directory)
    cfg = load_config(directory / "config.yaml", run_overrides)
    dist = init_distributed(cfg.train.threads_per_rank)
    compute = DTYPES[dtype or default_dtype(dist.device)]

    loader = build_loader(cfg.data, "val", dist.rank, dist.world_size, cfg.train.seed)
    if cfg.model.task == "recognition":
        if loader.num_classes != meta["num_classes"] or list(loader.classes) != meta["classes"]:
            raise UserError(
                f"validation set has {loader.num_classes} classes, checkpoint {meta['num_classes']}, or their "
                f"names differ: evaluate on the dataset {directory} was trained on"
            )
    task = make_task(cfg, compute, dist.device)
    model, _, _ = load_trained(directory, dist.device, compute, run_overrides)

    metrics = task.evaluate(model, loader)[0]
    metrics["checkpoint"] = str(directory)
    if dist.is_main:
        report_dir = Path(out) if out else directory / f"eval_{crops}x{clips}"
        files = task.write_report(metrics, report_dir, "eval")
        report = ", ".join(str(f) for f in files)
        print(f"[s4v] {cfg.model.kind} {directory}: {task.summary(metrics)}\n[s4v] report: {report}", flush=True)
        _track(cfg, meta, task.tracked(metrics), metrics["views"], report_dir)
    return metrics


def _track(cfg: Config, meta: dict[str, Any], metrics: dict[str, float], views: str, report_dir: Path) -> None:
    """Add the multi-view result to the training run's MLflow run (when the store still has it)."""
    run_id = meta.get("mlflow_run_id")
    if not (cfg.tracking.enabled and run_id):
        return
    tracker = Tracker(
        True, cfg.tracking.uri, cfg.tracking.experiment, system_metrics=False, run_id=run_id, resume_only=True
    )
    prefix = f"eval_{views}"
    tracker.log_metrics({f"{prefix}/{k}": v for k, v in metrics.items()}, meta.get("step"))
    tracker.log_artifacts(report_dir, prefix)
    tracker.finish()


def evaluate_sweep(
    root: str | Path,
    views: str = "1x1",
    overrides: list[str] | tuple[str, ...] = (),
    out: str | None = None,
    dtype: str | None = None,
) -> list[dict[str, Any]]:
    """Collective: evaluate every exported member of the sweep in `root` on one frozen pass per batch
    (the members' side networks on one tower, as in training); reports per member and a sweep table."""
    root = Path(root)
    crops, clips = parse_views(views)
    run_overrides = [*overrides, f"data.test_crops={crops}", f"data.test_clips={clips}"]
    report = json.loads((root / "sweep.json").read_text())
    exported = [m for m in report["members"] if m["export"] is not None]
    if not exported:
        raise UserError(f"{root}: no member of this sweep was exported (all failed, or the run did not finish)")
    finals = [root / m["export"] for m in exported]
    cfgs = [load_config(f / "config.yaml", run_overrides) for f in finals]
    meta = read_meta(finals[0])
    dist = init_distributed(cfgs[0].train.threads_per_rank)
    compute = DTYPES[dtype or default_dtype(dist.device)]
    loader = build_loader(cfgs[0].data, "val", dist.rank, dist.world_size, cfgs[0].train.seed)
    if list(loader.classes) != meta["classes"]:
        raise UserError(f"validation classes differ from those {root} was trained on: evaluate on its dataset")
    # Built as the training run built it (the members' towers are one: same weights file or seed).
    model = build_model(cfgs[0], meta["num_classes"], dist.device, getattr(torch, meta["frozen_dtype"]), cfgs)
    check_fingerprint(meta["backbone_fingerprint"], backbone_fingerprint(model))
    prepare_for_dtype(model, compute)
    members = list(model.members) if len(cfgs) > 1 else [TrainableView(model)]
    for module, final in zip(members, finals, strict=True):
        module.load_state_dict(load_trainable(final))
    task = make_task(cfgs[0], compute, dist.device)
    results = task.evaluate(model.eval(), loader)
    if dist.is_main:
        report_dir = Path(out) if out else root / f"eval_{crops}x{clips}"
        scored = {}
        for m, final, metrics in zip(exported, finals, results, strict=True):
            task.write_report(metrics | {"checkpoint": str(final)}, report_dir / m["name"], "eval")
            print(f"[s4v] {m['name']}: {task.summary(metrics)}", flush=True)
            scored[m["name"]] = next(iter(task.tracked(metrics).values()))
        # Every member of the training report, a failed one with no score.
        rows = [
            m | {"last": scored.get(m["name"]), "best": scored.get(m["name"]), "best_epoch": None}
            for m in report["members"]
        ]
        metric = next(iter(task.tracked(results[0])))
        files = write_sweep_report(report_dir, rows, metric)
        print(f"[s4v] report: {files[1]}", flush=True)
    return results
