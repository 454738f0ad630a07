"""Pieces every baseline shares: the open_clip tower, per-frame embedding, freezing, the video head."""

from __future__ import annotations

import math

import open_clip
import torch
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

# OpenAI CLIP weights use QuickGELU (x * sigmoid(1.702 x)); it saves more for backward than nn.GELU,
# so the -quickgelu configs are what the baselines' papers actually trained.
CLIP_MODELS: dict[str, str] = {
    "b32": "ViT-B-32-quickgelu",
    "b16": "ViT-B-16-quickgelu",
    "l14": "ViT-L-14-quickgelu",
}


def build_clip(backbone: str, device: str | torch.device = "cpu") -> nn.Module:
    """Random-init open_clip CLIP (no weights are ever downloaded); `device="meta"` allocates nothing."""
    name = CLIP_MODELS.get(backbone, backbone)
    with torch.device(device):
        return open_clip.create_model(name, pretrained=None, device=device)


def build_visual(backbone: str, device: str | torch.device = "cpu") -> VisionTransformer:
    visual = build_clip(backbone, device).visual
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
