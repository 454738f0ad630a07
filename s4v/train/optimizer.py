"""The optimizer and LR schedule of the trainable parameters: AdamW whose parameter groups are sweep
members stepped (and clipped) independently, the warmup-cosine schedule, and the clamp of a parameter
together with DeepSpeed's fp32 master copy of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from s4v.config import Config, OptimConfig


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
