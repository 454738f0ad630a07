"""DeepSpeed engine around the trainable part of a model on a frozen tower.

DeepSpeed is handed a `TrainableView`: a module that registers only the modules holding trainable
parameters (side network + head) and calls the full model in `forward`. So DeepSpeed casts, broadcasts,
all-reduces, partitions (ZeRO) and checkpoints only the trainable state, while the frozen tower stays
out of its reach: each rank builds it identically (same seed or same weights file) and keeps its own
replica in the compute dtype, without gradients or optimizer state.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from s4v.config import Config, OptimConfig, is_sweep
from s4v.errors import UserError
from s4v.train.distributed import DistInfo

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

# Recipe-derived keys: set from the run config, a DeepSpeed JSON may not contradict them.
_DERIVED = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")


class TrainableView(nn.Module):
    """The model's trainable modules as DeepSpeed's module; `forward` runs the whole model.

    The full model is held outside `_modules`, so DeepSpeed never sees the frozen tower.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "full", model)
        for name, child in model.named_children():
            if any(p.requires_grad for p in child.parameters()):
                self.add_module(name, child)
        held = {id(p) for p in self.parameters()}
        wanted = {id(p) for p in model.trainable_parameters()}
        if held != wanted or any(not p.requires_grad for p in self.parameters()):
            raise ValueError(
                "trainable and frozen parameters share a top-level module; TrainableView needs them "
                "in separate children of the model"
            )

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.full(*inputs)


def _fp32_affine_forward(bn: nn.modules.batchnorm._BatchNorm, base: type, x: torch.Tensor) -> torch.Tensor:
    """`base.forward` with fp32 affine parameters on fp16/bf16 input; running statistics stay fp32."""
    params = bn._parameters
    saved = params["weight"], params["bias"]
    try:
        params["weight"], params["bias"] = (None if p is None else p.float() for p in saved)
        return base.forward(bn, x)
    finally:
        params["weight"], params["bias"] = saved


class Fp32BatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that normalises in fp32 when its parameters are fp16/bf16 (see keep_batchnorm_fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _fp32_affine_forward(self, nn.BatchNorm1d, x)


class Fp32BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that normalises in fp32 when its parameters are fp16/bf16 (see keep_batchnorm_fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _fp32_affine_forward(self, nn.BatchNorm2d, x)


class Fp32BatchNorm3d(nn.BatchNorm3d):
    """BatchNorm3d that normalises in fp32 when its parameters are fp16/bf16 (see keep_batchnorm_fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _fp32_affine_forward(self, nn.BatchNorm3d, x)


# Module-level classes, so a patched module pickles (torch.save of the whole module) and loads back.
_FP32_BATCHNORM: dict[type, type] = {
    nn.BatchNorm1d: Fp32BatchNorm1d,
    nn.BatchNorm2d: Fp32BatchNorm2d,
    nn.BatchNorm3d: Fp32BatchNorm3d,
}


def keep_batchnorm_fp32(module: nn.Module) -> int:
    """Make every BatchNorm of `module` normalise in fp32 once its parameters are cast to fp16/bf16.

    Buffers (the running statistics) stay fp32 while parameters are cast; a BatchNorm then sees
    half-precision affine weights beside fp32 statistics, which PyTorch rejects. The Fp32BatchNorm*
    classes upcast the affine weights (gradients flow back to the half copies) and PyTorch's
    mixed-precision batch norm computes statistics in fp32. Returns how many modules were patched.
    """
    count = 0
    for m in module.modules():
        if type(m) in _FP32_BATCHNORM:
            m.__class__ = _FP32_BATCHNORM[type(m)]
            count += 1
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and type(m) not in _FP32_BATCHNORM.values():
            raise TypeError(f"no fp32 variant of {type(m).__name__}; add one beside Fp32BatchNorm3d")
    return count


def prepare_for_dtype(model: nn.Module, dtype: torch.dtype) -> TrainableView:
    """Put `model` in the compute dtype the way training and evaluation both run it; returns its view.

    The frozen tower is cast to `dtype`; trainable parameters are cast too (buffers stay fp32, as
    DeepSpeed's fp16/bf16 modes leave them, so DeepSpeed's own cast of the view is then a no-op) and
    every BatchNorm normalises in fp32.
    """
    model.backbone.to(dtype)  # each rank's frozen replica lives in the compute dtype
    view = TrainableView(model)
    if dtype != torch.float32:
        for p in view.parameters():
            p.data = p.data.to(dtype)
        keep_batchnorm_fp32(view)
    return view


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


def compute_dtype(ds: dict[str, Any]) -> torch.dtype:
    if ds.get("fp16", {}).get("enabled", False):
        return torch.float16
    if ds.get("bf16", {}).get("enabled", False):
        return torch.bfloat16
    return torch.float32


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warmup from 0, then cosine decay to `min_ratio` (the reference's schedule)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def member_clipping(cfg: Config, ds: dict[str, Any]) -> bool:
    """Whether `optim.clip_grad` is applied per member by `SkippingAdamW` rather than by DeepSpeed.

    Recognition members are one parameter group each, and ZeRO 0-2 hand every group to the optimizer
    whole or as one slice per rank, so the group's norm is the member's; a retrieval model spans two
    groups and ZeRO-3 regroups parameters, so those runs (one member) keep DeepSpeed's global clipping.
    """
    return cfg.model.task == "recognition" and int(ds.get("zero_optimization", {}).get("stage", 0)) < 3


def _member_group(params: list[nn.Parameter], optim: OptimConfig, member: int, clip: bool) -> dict[str, Any]:
    return {
        "params": params,
        "lr": optim.lr,
        "weight_decay": optim.weight_decay,
        "betas": optim.betas,
        "eps": optim.eps,
        "clip_grad": optim.clip_grad if clip else 0.0,
        "member": member,
    }


def build_optimizer(model: nn.Module, optims: list[OptimConfig], clip: bool) -> SkippingAdamW:
    """AdamW over the trainable parameters only (weight decay on all of them, as in the reference).

    One parameter group per member (a sweep: `model.members`), with the member's recipe; `clip`: the
    group carries the member's `clip_grad` (see `member_clipping`). A model with pretrained trainable
    parts (retrieval: CLIP text tower, projection) gets two groups for its one member.
    """
    optim = optims[0]
    if hasattr(model, "members"):
        groups = [
            _member_group(list(m.parameters()), o, k, clip)
            for k, (m, o) in enumerate(zip(model.members, optims, strict=True))
        ]
    elif optim.clip_lr is not None and hasattr(model, "parameter_groups"):
        groups = [{**g, "member": 0, "clip_grad": 0.0} for g in model.parameter_groups(optim.clip_lr, optim.lr)]
    else:
        groups = [_member_group(model.trainable_parameters(), optim, 0, clip)]
    return SkippingAdamW(
        groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay, foreach=False
    )


class SkippingAdamW(torch.optim.AdamW):
    """AdamW whose parameter groups are members stepped independently: a group whose gradients are not all
    finite, or whose member it was told to `refuse`, is left alone (weights and moments), and a group with a
    `clip_grad` is clipped by its own norm.

    `overflow` (every group refused) is what DeepSpeed reads after every optimizer step: when it is set,
    DeepSpeed leaves the LR scheduler alone, counts a skipped step and `engine.was_step_applied()` is False.
    Its fp16, bf16 and ZeRO optimizers also check gradients themselves, over all groups at once. Under ZeRO
    1-2 each rank holds a slice of every group (`partitioned`), so norms and flags are summed over ranks.
    """

    overflow = False

    def __init__(self, params: Any, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.partitioned = False
        self._refused: set[int] = set()  # members told to sit out the next step (`refuse`)
        self._bad: set[int] = set()  # members found with non-finite gradients since `take_bad`

    def refuse(self, members: set[int]) -> None:
        """Leave `members` alone at the next step (their loss was not finite, or they have failed)."""
        self._refused = set(members)

    def take_bad(self) -> set[int]:
        """The members whose gradients were found non-finite since the last call (then forgotten)."""
        bad, self._bad = self._bad, set()
        return bad

    def _admit(self, group: dict[str, Any]) -> bool:
        grads = [p.grad for p in group["params"] if p.grad is not None]
        device = group["params"][0].device
        sums = torch.zeros(2, dtype=torch.float64, device=device)  # [squared norm, non-finite count]
        for g in grads:
            sums[0] += g.double().square().sum()
            sums[1] += (~torch.isfinite(g)).sum()
        if self.partitioned:
            torch.distributed.all_reduce(sums)
        member = group.get("member", 0)
        if sums[1] > 0:
            self._bad.add(member)
        if sums[1] > 0 or member in self._refused:
            return False
        clip, norm = group.get("clip_grad", 0.0), float(sums[0].sqrt())
        if clip > 0 and norm > clip:  # torch's clip_grad_norm_ coefficient, on this member's norm alone
            for g in grads:
                g.mul_(clip / (norm + 1e-6))
        return True

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        groups = self.param_groups
        admitted = [g for g in groups if self._admit(g)]
        self.overflow = len(admitted) < len(groups) and not admitted
        if not admitted:
            return None
        self.param_groups = admitted  # AdamW steps the groups it is given; the refused keep their state
        try:
            return super().step(closure)
        finally:
            self.param_groups = groups


@torch.no_grad()
def clamp_parameter(param: nn.Parameter, max_value: float) -> None:
    """Clamp a trainable parameter in place, and the fp32 master copy DeepSpeed keeps of it under ZeRO 1-3
    or its bf16 optimizer (otherwise the parameter is the master). fp16 without ZeRO keeps a master
    DeepSpeed offers no per-parameter access to: there the clamp reaches the fp16 copy only."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

    param.clamp_(max=max_value)
    master = safe_get_full_fp32_param(param)
    if master is not None:
        safe_set_full_fp32_param(param, master.clamp(max=max_value))


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
