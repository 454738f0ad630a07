"""`launch/eval.py`: rebuild the model of a checkpoint, evaluate it with multi-view averaging, write a report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from s4v.config import Config, load_config
from s4v.data import build_loader
from s4v.data.config import parse_views
from s4v.errors import UserError
from s4v.tracking import Tracker
from s4v.train.build import backbone_fingerprint, build_model, check_fingerprint
from s4v.train.checkpoint import load_trainable, read_meta
from s4v.train.distributed import init_distributed
from s4v.train.engine import prepare_for_dtype
from s4v.train.tasks import make_task

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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
    meta = read_meta(directory)
    cfg = load_config(directory / "config.yaml", [*overrides, f"data.test_crops={crops}", f"data.test_clips={clips}"])
    dist = init_distributed(cfg.train.threads_per_rank)
    compute = DTYPES[dtype or ("fp32" if dist.device.type == "cpu" else "fp16")]

    loader = build_loader(cfg.data, "val", dist.rank, dist.world_size, cfg.train.seed)
    if cfg.model.task == "recognition":
        if loader.num_classes != meta["num_classes"] or list(loader.classes) != meta["classes"]:
            raise UserError(
                f"validation set has {loader.num_classes} classes, checkpoint {meta['num_classes']}, or their "
                f"names differ: evaluate on the dataset {directory} was trained on"
            )
    task = make_task(cfg, compute, dist.device)
    model = build_model(cfg, meta["num_classes"], dist.device)
    check_fingerprint(meta["backbone_fingerprint"], backbone_fingerprint(model))
    prepare_for_dtype(model, compute).load_state_dict(load_trainable(directory))

    metrics = task.evaluate(model, loader)
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
