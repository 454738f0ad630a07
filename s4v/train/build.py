"""Model construction shared by training and evaluation, so both build the identical frozen tower."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor

from s4v.config import Config, SweepConfig, check_preset, is_sweep
from s4v.core.errors import UserError
from s4v.models import create_model, create_retrieval_model
from s4v.models.classifier import SweepClassifier
from s4v.models.presets import side_classifier
from s4v.models.side_spec import SideSpec
from s4v.train.distributed import gather_with_grad


def frozen_mesh(cfg: Config, device: torch.device) -> DeviceMesh | None:
    """The ranks the frozen tower is sharded over: every rank of the job with `model.shard_frozen`, else None."""
    if not cfg.model.shard_frozen or not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    return init_device_mesh(device.type, (dist.get_world_size(),))


def build_model(
    cfg: Config,
    num_classes: int,
    device: torch.device,
    frozen_dtype: torch.dtype | None = None,
    members: Sequence[Config] = (),
) -> nn.Module:
    """Seeded build: a random-init tower (no weights file) is the same on every rank and in eval.

    The frozen tower is made directly in `frozen_dtype` (the compute dtype; None: fp32) and, with
    `model.shard_frozen` in a multi-rank job, sharded over the ranks. The trainable modules are seeded
    by `train.seed` again once the tower exists. With two or more `members`, or any for a sweep's `cfg`
    (its survivors may be one), the tower is `cfg`'s and each member's side network and head are made as
    that member's run alone would make them: a `SweepClassifier`.
    """
    if len(members) > 1 or (members and is_sweep(cfg)):
        return _sweep_model(cfg, num_classes, device, frozen_dtype, members)
    check_preset(cfg)  # load_config checks it too; a Config built in code has not been through it
    name = cfg.model.preset
    common = {
        "kind": cfg.model.kind,
        "checkpoint": cfg.model.checkpoint,
        "attn_backend": cfg.model.attn_backend,
        "device": device,
        "frozen_dtype": frozen_dtype,
        "compile_frozen": cfg.model.compile_frozen,
        "frozen_mesh": frozen_mesh(cfg, device),
        "side": SideSpec.from_model_config(cfg.model),
    }
    torch.manual_seed(cfg.train.seed)
    if cfg.model.task == "retrieval":
        model = create_retrieval_model(name, matching=cfg.model.matching, **common)
        model.feature_gather = gather_with_grad  # negatives from every data-parallel rank's batch
        return model
    return create_model(name, num_classes, dropout=cfg.model.dropout, side_seed=cfg.train.seed, **common)


def _sweep_model(
    cfg: Config, num_classes: int, device: torch.device, frozen_dtype: torch.dtype | None, members: Sequence[Config]
) -> SweepClassifier:
    """The tower of `cfg` (its seed, weights and dtype), then each member's side network and head."""
    first = build_model(replace(cfg, sweep=SweepConfig()), num_classes, device, frozen_dtype)  # its side unused
    return sweep_members(first.backbone, num_classes, device, members)


def sweep_members(
    backbone: nn.Module, num_classes: int, device: torch.device, members: Sequence[Config]
) -> SweepClassifier:
    """Each member's side network and head on `backbone`, seeded by the member's `train.seed` (this reseeds
    the global RNG)."""
    models = []
    for member in members:
        torch.manual_seed(member.train.seed)
        m = member.model
        models.append(
            side_classifier(backbone, m.preset, num_classes, SideSpec.from_model_config(m), device, m.dropout)
        )
    return SweepClassifier.of(models)


@torch.no_grad()
def backbone_fingerprint(model: nn.Module) -> list[float]:
    """[sum, sum of |w|, count] over the frozen tower: catches a tower built from other weights or seed.

    A sharded tower sums its local shards and then across the ranks, so every rank gets the whole tower's value.
    """
    device = next(model.backbone.parameters()).device
    replicated = torch.zeros(2, dtype=torch.float64, device=device)
    sharded, count, group = replicated.clone(), 0, None  # sharded: this rank's slices, then summed over ranks
    for p in model.backbone.parameters():
        count += p.numel()  # a DTensor's is the whole tensor's
        sums = replicated
        if isinstance(p, DTensor):
            p, sums, group = p.to_local(), sharded, p.device_mesh.get_group()
        sums[0] += p.double().sum()
        sums[1] += p.double().abs().sum()
    if group is not None:
        dist.all_reduce(sharded, group=group)
    total, absolute = (replicated + sharded).tolist()
    return [total, absolute, float(count)]


def check_fingerprint(expected: list[float], actual: list[float]) -> None:
    """Equal counts and sums; both sides must build the tower in the same dtype (the run's compute dtype)."""
    ok = expected[2] == actual[2] and all(
        abs(e - a) <= 1e-5 * max(1.0, abs(e)) for e, a in zip(expected[:2], actual[:2], strict=True)
    )
    if not ok:
        raise UserError(
            f"frozen tower differs from the one the checkpoint was trained on (fingerprint {actual} vs "
            f"{expected}): check model.checkpoint / train.seed"
        )
