"""Members leave the shared pass: the model and its DeepSpeed engine are rebuilt with the others, which go on
bit for bit.

A member culled by successive halving, or one that has failed, would otherwise cost its forward, backward and
optimizer step to the end of the run. The staying members' training state is gathered as `elastic.pt` holds it
(fp32 masters, Adam moments, step counts, learning rates, schedule, DeepSpeed's counters, module weights and
BatchNorm statistics), a model of those members alone is made on the same frozen tower (new side networks,
under a forked RNG so the run's streams do not move), a new engine wraps it and the state is loaded into it,
member by member, renumbered. Values are copied, never recomputed, so each staying member's next step is the
one it would have taken in the full pass. Layouts whose state `elastic` cannot read per parameter (bf16 or
fp16 without ZeRO) keep every member in the pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from s4v.config import Config
from s4v.models.classifier import SweepClassifier
from s4v.train import elastic
from s4v.train.build import sweep_members
from s4v.train.distributed import DistInfo
from s4v.train.engine import build_engine
from s4v.train.optimizer import SkippingAdamW
from s4v.train.precision import TrainableView

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine


def can_shrink(engine: DeepSpeedEngine, view: nn.Module) -> bool:
    return elastic.supported(engine, view)


def shrink(
    model: SweepClassifier,
    engine: DeepSpeedEngine,
    view: nn.Module,
    keep: list[int],
    cfg: Config,
    members: list[Config],
    ds: dict[str, Any],
    dist: DistInfo,
    steps_per_epoch: int,
    num_classes: int,
) -> tuple[SweepClassifier, DeepSpeedEngine, TrainableView, SkippingAdamW]:
    """Collective: the pass of the members at model indices `keep` (their configs: `members`, in that order)."""
    state = elastic.members_only(elastic.consolidated(engine, view), keep)  # every rank loads it back
    engine.destroy()  # DeepSpeed's hooks and buffers on the old parameters
    devices = [dist.device] if dist.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the new members' init reseeds; the run's streams stay
        smaller = sweep_members(model.backbone, num_classes, dist.device, members)
    engine, view, optimizer = build_engine(smaller, cfg, ds, dist, steps_per_epoch, members)
    elastic.load_state(engine, view, state)
    return smaller, engine, view, optimizer
