"""`launch/eval.py`: rebuild the model of a checkpoint, evaluate it with multi-view averaging, write a report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from s4v.config import Config, load_config
from s4v.data import build_loader
from s4v.tracking import Tracker
from s4v.train.build import backbone_fingerprint, build_model, check_fingerprint
from s4v.train.checkpoint import load_trainable
from s4v.train.distributed import init_distributed
from s4v.train.engine import TrainableView, keep_batchnorm_fp32
from s4v.train.tasks import make_task

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_views(views: str) -> tuple[int, int]:
    try:
        crops, clips = (int(v) for v in views.lower().split("x"))
    except ValueError:
        raise ValueError(f"--views must look like 3x2 (crops x clips), got {views!r}") from None
    return crops, clips


def evaluate_checkpoint(
    checkpoint: str | Path,
    views: str = "1x1",
    overrides: list[str] = (),
    out: str | None = None,
    dtype: str | None = None,
) -> dict[str, Any]:
    directory = Path(checkpoint)
    crops, clips = parse_views(views)
    cfg = load_config(directory / "config.yaml", [*overrides, f"data.test_crops={crops}", f"data.test_clips={clips}"])
    meta = json.loads((directory / "meta.json").read_text())
    dist = init_distributed(cfg.train.threads_per_rank)
    compute = DTYPES[dtype or ("fp32" if dist.device.type == "cpu" else "fp16")]

    loader = build_loader(cfg.data, "val", dist.rank, dist.world_size, cfg.train.seed)
    task = make_task(cfg)
    if cfg.model.task == "recognition" and loader.num_classes != meta["num_classes"]:
        raise ValueError(f"validation set has {loader.num_classes} classes, checkpoint {meta['num_classes']}")
    model = build_model(cfg, meta["num_classes"], dist.device)
    check_fingerprint(meta["backbone_fingerprint"], backbone_fingerprint(model))
    view = TrainableView(model)
    view.load_state_dict(load_trainable(directory))
    model.backbone.to(compute)
    if compute != torch.float32:
        for p in view.parameters():
            p.data = p.data.to(compute)
        keep_batchnorm_fp32(view)
    model.eval()

    metrics = task.evaluate(model, model, loader, loader, compute, dist.device)
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
