"""Model construction shared by training and evaluation, so both build the identical frozen tower."""

from __future__ import annotations

import torch
from torch import nn

from s4v.config import Config, check_preset
from s4v.errors import UserError
from s4v.models import create_model, create_retrieval_model
from s4v.train.distributed import gather_with_grad


def build_model(cfg: Config, num_classes: int, device: torch.device) -> nn.Module:
    """Seeded build: a random-init tower (no weights file) is the same on every rank and in eval."""
    check_preset(cfg)  # load_config checks it too; a Config built in code has not been through it
    name, temporal_impl = cfg.model.preset, cfg.model.temporal_impl
    torch.manual_seed(cfg.train.seed)
    if cfg.model.task == "retrieval":
        model = create_retrieval_model(
            name,
            kind=cfg.model.kind,
            matching=cfg.model.matching,
            checkpoint=cfg.model.checkpoint,
            attn_backend=cfg.model.attn_backend,
            device=device,
            temporal_impl=temporal_impl,
            compile_frozen=cfg.model.compile_frozen,
        )
        model.feature_gather = gather_with_grad  # negatives from every data-parallel rank's batch
        return model
    return create_model(
        name,
        num_classes=num_classes,
        kind=cfg.model.kind,
        checkpoint=cfg.model.checkpoint,
        attn_backend=cfg.model.attn_backend,
        device=device,
        temporal_impl=temporal_impl,
        dropout=cfg.model.dropout,
        compile_frozen=cfg.model.compile_frozen,
    )


@torch.no_grad()
def backbone_fingerprint(model: nn.Module) -> list[float]:
    """[sum, sum of |w|, count] over the frozen tower: catches a tower built from other weights or seed."""
    total = torch.zeros((), dtype=torch.float64, device=next(model.backbone.parameters()).device)
    absolute, count = total.clone(), 0
    for p in model.backbone.parameters():
        total += p.double().sum()
        absolute += p.double().abs().sum()
        count += p.numel()
    return [total.item(), absolute.item(), float(count)]


def check_fingerprint(expected: list[float], actual: list[float]) -> None:
    ok = expected[2] == actual[2] and all(
        abs(e - a) <= 1e-5 * max(1.0, abs(e)) for e, a in zip(expected[:2], actual[:2], strict=True)
    )
    if not ok:
        raise UserError(
            f"frozen tower differs from the one the checkpoint was trained on (fingerprint {actual} vs "
            f"{expected}): check model.checkpoint / train.seed"
        )
