"""Pieces every baseline shares: the open_clip tower, per-frame embedding, freezing, the video head."""

from __future__ import annotations

import math

import torch
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

from s4v.models.backbone import build_clip


def build_visual(backbone: str, device: str | torch.device = "cpu") -> VisionTransformer:
    """The random-init open_clip image tower of `backbone` (a key of the architecture table)."""
    visual = build_clip(backbone, device=device).visual
    if not isinstance(visual, VisionTransformer):
        raise TypeError(f"{backbone}: baselines need an open_clip VisionTransformer, got {type(visual).__name__}")
    return visual


def frozen(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module


def grid(visual: VisionTransformer) -> tuple[int, int]:
    return visual.grid_size


def width(visual: VisionTransformer) -> int:
    return visual.transformer.width


def embed(visual: VisionTransformer, video: Tensor) -> Tensor:
    """(B, T, 3, H, W) -> tokens (B*T, 1 + N, D) entering the first block ([CLS] first)."""
    frames = video.flatten(0, 1).to(visual.conv1.weight.dtype)
    return visual._embeds(frames)


def cls_out(visual: VisionTransformer, x: Tensor) -> Tensor:
    """Final [CLS] after ln_post (no projection), (B*T, D)."""
    return visual.ln_post(x[:, 0])


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class VideoHead(nn.Module):
    """Mean over frames, dropout, linear classifier (the head ST-Adapter, AIM and full fine-tuning use)."""

    def __init__(self, dim: int, num_classes: int, num_frames: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, frame_features: Tensor) -> Tensor:
        x = frame_features.view(-1, self.num_frames, frame_features.shape[-1]).mean(1)
        return self.fc(self.dropout(x))


def square_side(tokens: int) -> int:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"{tokens} patch tokens do not form a square grid")
    return side
