"""Baselines of the paper's memory tables, built on open_clip's ViT with their papers' trainable placement.

`build_baseline(name, backbone, num_classes, num_frames, device)`; `BASELINES` lists the names.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from s4v.baselines.aim import AIMViT
from s4v.baselines.dist import DiST
from s4v.baselines.evl import EVL
from s4v.baselines.full import CLIP4Clip, FrozenMeanPool, FullFinetune
from s4v.baselines.st_adapter import STAdapterViT

BASELINES: dict[str, Callable[..., nn.Module]] = {
    "full": FullFinetune,
    "frozen-meanpool": FrozenMeanPool,
    "st-adapter": STAdapterViT,
    "aim": AIMViT,
    "evl": EVL,
    "dist": DiST,
}


def build_baseline(
    name: str, backbone: str, num_classes: int, num_frames: int = 8, device: str | torch.device = "cpu"
) -> nn.Module:
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}")
    return BASELINES[name](backbone, num_classes, num_frames=num_frames, device=device)


def input_frames(name: str, num_frames: int) -> int:
    """Frames a baseline reads per video: DiST's temporal encoder sees alpha (= 2) times more."""
    return 2 * num_frames if name == "dist" else num_frames


__all__ = ["BASELINES", "build_baseline", "input_frames", "CLIP4Clip"]
