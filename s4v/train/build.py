"""Model construction shared by training and evaluation, so both build the identical frozen tower."""

from __future__ import annotations

import torch

from s4v.config import Config
from s4v.models import PRESETS, RETRIEVAL_PRESETS, create_model, create_retrieval_model
from s4v.models.classifier import VideoClassifier


def build_model(cfg: Config, num_classes: int, device: torch.device) -> VideoClassifier:
    """Seeded build: a random-init tower (no weights file) is the same on every rank and in eval."""
    presets = RETRIEVAL_PRESETS if cfg.model.task == "retrieval" else PRESETS
    preset = presets.get(cfg.model.preset)
    if preset is None:
        raise ValueError(f"unknown {cfg.model.task} preset {cfg.model.preset!r}; choose one of {sorted(presets)}")
    if cfg.data.image_size != preset.image_size:
        raise ValueError(
            f"data.image_size={cfg.data.image_size} but preset {cfg.model.preset!r} expects {preset.image_size}"
        )
    torch.manual_seed(cfg.train.seed)
    if cfg.model.task == "retrieval":
        return create_retrieval_model(
            cfg.model.preset,
            kind=cfg.model.kind,
            matching=cfg.model.matching,
            checkpoint=cfg.model.checkpoint,
            attn_backend=cfg.model.attn_backend,
            device=device,
        )
    return create_model(
        cfg.model.preset,
        num_classes=num_classes,
        kind=cfg.model.kind,
        checkpoint=cfg.model.checkpoint,
        attn_backend=cfg.model.attn_backend,
        device=device,
        dropout=cfg.model.dropout,
    )


@torch.no_grad()
def backbone_fingerprint(model: VideoClassifier) -> list[float]:
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
        raise ValueError(
            f"frozen tower differs from the one the checkpoint was trained on (fingerprint {actual} vs "
            f"{expected}): check model.checkpoint / train.seed"
        )
