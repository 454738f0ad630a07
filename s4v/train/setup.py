"""What a training job derives before its loop starts: the schedule of an epoch, the FLOPs of a step, the
per-rank RNG streams, and what it reports of itself (MLflow params and the one-line summary)."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from s4v.config import Config, flatten, to_dict
from s4v.core.errors import UserError
from s4v.data.heldout import heldout_summary
from s4v.data.loader import VideoLoader
from s4v.train.build import build_model
from s4v.train.distributed import DistInfo
from s4v.train.engine import BatchPlan
from s4v.train.metrics import flops_per_micro_batch
from s4v.train.tracking import Tracker


def schedule(cfg: Config, loader: VideoLoader, plan: BatchPlan) -> tuple[int, int, int]:
    """(optimizer steps per epoch, videos an epoch consumes, the run's last step)."""
    steps_per_epoch = len(loader) // plan.accumulation
    if steps_per_epoch == 0:
        raise UserError(
            f"{len(loader)} micro-batches per epoch < {plan.accumulation} accumulation steps: "
            "lower optim.batch_size or data.batch_size"
        )
    videos_per_epoch = steps_per_epoch * plan.global_batch  # the tail of the order is dropped
    return steps_per_epoch, videos_per_epoch, cfg.train.max_steps or cfg.optim.epochs * steps_per_epoch


def seed_rank(seed: int, rank: int) -> None:
    """Per-rank streams for dropout and friends (the data pipeline seeds itself per video)."""
    torch.manual_seed(seed + 1000003 * rank)
    np.random.seed((seed + 1000003 * rank) % 2**32)
    random.seed(seed + 1000003 * rank)


def micro_batch_flops(cfg: Config, num_classes: int, members: list[Config]) -> float:
    """Counted on a meta copy built like the model (no weights file read, no feature gathering, not sharded)."""
    cfg = replace(cfg, model=replace(cfg.model, checkpoint=None, shard_frozen=False))

    def meta_model(device: torch.device) -> nn.Module:
        model = build_model(cfg, num_classes, device, members=members)
        if hasattr(model, "feature_gather"):
            model.feature_gather = None
        return model

    return flops_per_micro_batch(cfg, meta_model)


def run_meta(loader: VideoLoader, fingerprint: list[float], dtype: torch.dtype, world_size: int, ds: dict) -> dict:
    """What every checkpoint and export records of the run, and a resume checks."""
    return {
        "num_classes": loader.num_classes,
        "classes": list(loader.classes),
        "backbone_fingerprint": fingerprint,
        "frozen_dtype": str(dtype).removeprefix("torch."),  # the tower was built and fingerprinted in it
        "world_size": world_size,
        "ds_config": ds,
        "heldout": heldout_summary(loader),  # the videos carved out of training for selection, or None
    }


def run_tracker(cfg: Config, is_main: bool, run_id: str | None) -> Tracker:
    """The run's MLflow run on rank 0 (continued when a resumed checkpoint names it)."""
    t = cfg.tracking
    name = t.run_name or Path(cfg.train.out_dir).name
    return Tracker(
        t.enabled and is_main, t.uri, t.experiment, name, t.system_metrics, t.system_metrics_interval, run_id
    )


def _counts(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.trainable_parameters())
    return trainable, sum(p.numel() for p in model.backbone.parameters())


def run_params(
    cfg: Config, ds: dict[str, Any], dist: DistInfo, plan: BatchPlan, steps_per_epoch: int, model: nn.Module
) -> dict[str, Any]:
    """The MLflow params of a run: its resolved config, DeepSpeed JSON and layout."""
    trainable, frozen = _counts(model)
    layout = {
        "world_size": dist.world_size,
        "accumulation_steps": plan.accumulation,
        "steps_per_epoch": steps_per_epoch,
        "trainable_params": trainable,
        "frozen_params": frozen,
        "device": dist.device.type,
    }
    return {**flatten(to_dict(cfg)), **flatten({"ds": ds}), **layout}


def summary(
    cfg: Config, dist: DistInfo, plan: BatchPlan, steps_per_epoch: int, model: nn.Module, dtype: torch.dtype
) -> str:
    trainable, frozen = _counts(model)
    return (
        f"{cfg.model.kind} on {cfg.model.preset}: {trainable:,} trainable / {frozen:,} frozen "
        f"params; {dist.world_size} rank(s) on {dist.device.type}, {dtype}; global batch "
        f"{plan.global_batch} = {plan.micro_batch} x {dist.world_size} x {plan.accumulation}; "
        f"{steps_per_epoch} steps/epoch x {cfg.optim.epochs} epochs"
    )
