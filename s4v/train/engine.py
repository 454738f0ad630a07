"""DeepSpeed engine around the trainable part of a model on a frozen tower: the batch plan, the DeepSpeed
JSON (loading, recipe-derived keys, the layouts a sweep refuses) and `deepspeed.initialize`.

DeepSpeed is handed the model's `TrainableView` (s4v.train.precision), so it casts, broadcasts,
all-reduces, partitions (ZeRO) and checkpoints only the trainable state; the frozen tower stays out of its
reach.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from s4v.config import Config, OptimConfig, is_sweep
from s4v.core.errors import UserError
from s4v.train.distributed import DistInfo
from s4v.train.optimizer import SkippingAdamW, build_optimizer, member_clipping, warmup_cosine
from s4v.train.precision import TrainableView, compute_dtype, prepare_for_dtype

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

# Recipe-derived keys: set from the run config, a DeepSpeed JSON may not contradict them.
_DERIVED = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")


@dataclass(frozen=True)
class BatchPlan:
    global_batch: int
    micro_batch: int
    accumulation: int


def plan_batch(optim: OptimConfig, micro_batch: int, world_size: int) -> BatchPlan:
    """Global batch (Table 12) = micro batch x ranks x accumulation steps; must divide exactly."""
    per_step = micro_batch * world_size
    if optim.batch_size % per_step:
        raise UserError(
            f"global batch optim.batch_size={optim.batch_size} is not a multiple of data.batch_size "
            f"({micro_batch}) x world size ({world_size})"
        )
    return BatchPlan(optim.batch_size, micro_batch, optim.batch_size // per_step)


def load_ds_config(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a DeepSpeed JSON and apply `ds.`-prefixed overrides (dotted keys)."""
    ds = json.loads(Path(path).read_text())
    for key, value in (overrides or {}).items():
        node = ds
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return ds


def resolve_ds_config(ds: dict[str, Any], cfg: Config, plan: BatchPlan) -> dict[str, Any]:
    """Fill the recipe-derived keys; refuse a JSON that sets them to something else."""
    ds = dict(ds)
    derived = {
        "train_batch_size": plan.global_batch,
        "train_micro_batch_size_per_gpu": plan.micro_batch,
        "gradient_accumulation_steps": plan.accumulation,
        "gradient_clipping": cfg.optim.clip_grad,
    }
    for key in _DERIVED:
        if key in ds and ds[key] != derived[key]:
            raise UserError(
                f"DeepSpeed config sets {key}={ds[key]!r} but the run config gives {derived[key]!r}; "
                "batch sizes and clipping come from the run config (optim.batch_size, data.batch_size, "
                "optim.clip_grad): drop the key from the JSON"
            )
    ds.update(derived)
    if member_clipping(cfg, ds):  # SkippingAdamW clips each member by its own norm instead
        ds["gradient_clipping"] = 0.0
    check_sweep_layout(cfg, ds)
    if "optimizer" in ds or "scheduler" in ds:
        raise UserError("the DeepSpeed config must not define optimizer/scheduler: they come from the recipe")
    # ZeRO accepts client optimizers by exact type; ours is torch's AdamW plus a finite-gradient check
    # (SkippingAdamW), which ZeRO partitions like AdamW. Without this every ZeRO JSON fails at initialize.
    ds.setdefault("zero_allow_untested_optimizer", True)
    return ds


def check_sweep_layout(cfg: Config, ds: dict[str, Any]) -> None:
    """A sweep's members must step independently: refuse the layouts where DeepSpeed couples them."""
    if not is_sweep(cfg):
        return
    if compute_dtype(ds) == torch.float16:
        raise UserError(
            "sweep: fp16 shares one dynamic loss scale, so one member's overflow would skip every member's "
            "step; use bf16 (ds.bf16.enabled=true ds.fp16.enabled=false) or fp32"
        )
    if not member_clipping(cfg, ds):
        raise UserError("sweep: ZeRO-3 regroups the members' parameters; use ZeRO stage 0, 1 or 2")


def build_engine(
    model: nn.Module,
    cfg: Config,
    ds: dict[str, Any],
    dist: DistInfo,
    steps_per_epoch: int,
    members: list[Config] | None = None,
) -> tuple[DeepSpeedEngine, TrainableView, SkippingAdamW]:
    """deepspeed.initialize on the trainable view, with our AdamW (a group per member of `members`, a
    sweep's configs; None: `cfg` alone) and warmup-cosine schedules."""
    import deepspeed

    dtype = compute_dtype(ds)
    if dtype == torch.float16 and dist.device.type == "cpu":
        raise UserError("fp16 is not supported by DeepSpeed on CPU: use bf16 or fp32 (ds_configs/cpu.json)")
    view = prepare_for_dtype(model, dtype)
    optims = [m.optim for m in members] if members else [cfg.optim]
    optimizer = build_optimizer(model, optims, member_clipping(cfg, ds))
    total = max(1, cfg.optim.epochs * steps_per_epoch)
    schedules = [
        warmup_cosine(total, round(o.warmup_epochs * steps_per_epoch), o.min_lr / o.lr if o.lr else 0.0)
        for o in (optims[group["member"]] for group in optimizer.param_groups)
    ]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
    engine, _, _, _ = deepspeed.initialize(
        model=view, optimizer=optimizer, lr_scheduler=scheduler, config=ds, dist_init_required=False
    )
    optimizer.partitioned = engine.zero_optimization_stage() > 0 and dist.world_size > 1
    return engine, view, optimizer
