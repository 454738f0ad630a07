"""Model presets (paper Table 1) and the `create_model` factory."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from s4v.models.backbone import FrozenBackbone, build_clip
from s4v.models.classifier import MeanPoolProbe, Side4VideoClassifier, VideoClassifier
from s4v.models.retrieval import VideoTextRetrieval


@dataclass(frozen=True)
class Preset:
    """A frozen tower and the side network (l layers of width d) that reads it."""

    backbone: str
    side_layers: int
    side_dim: int
    image_size: int = 224
    patch_size: int = 16
    num_frames: int = 8
    head_dropout: float = 0.5
    paper_tunable_m: float | None = None  # Table 2, 174 classes, rounded to whole millions


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", 4, 64, image_size=64, patch_size=8, head_dropout=0.0),
    "b16-light": Preset("b16", 6, 192, paper_tunable_m=4),
    "b16": Preset("b16", 12, 320, paper_tunable_m=21),
    "l14-light": Preset("l14", 12, 320, patch_size=14, paper_tunable_m=22),
    "l14": Preset("l14", 24, 512, patch_size=14, paper_tunable_m=102),
    "e14-light": Preset("e14", 32, 576, patch_size=14),
}

MODEL_KINDS = ("side4video", "meanpool")

# Retrieval (s.4.1): d = 320 with 12 / 12 / 24 / 32 layers for B/32, B/16, L/14, E/14; 12 frames.
RETRIEVAL_PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", 4, 64, image_size=64, patch_size=8),
    "b32": Preset("b32", 12, 320, patch_size=32, num_frames=12),
    "b16": Preset("b16", 12, 320, num_frames=12),
    "l14": Preset("l14", 24, 320, patch_size=14, num_frames=12),
    "e14": Preset("e14", 32, 320, patch_size=14, num_frames=12),
}


def _checked_preset(presets: dict[str, Preset], preset: str, kind: str, task: str) -> Preset:
    if preset not in presets:
        raise ValueError(f"unknown {task} preset {preset!r}; choose one of {sorted(presets)}")
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {MODEL_KINDS}")
    return presets[preset]


def create_model(
    preset: str,
    num_classes: int,
    kind: str = "side4video",
    checkpoint: str | None = None,
    attn_backend: str = "sdpa",
    device: str | torch.device = "cpu",
    frozen_dtype: torch.dtype | None = None,
    temporal_impl: str = "auto",
    dropout: float | None = None,
) -> VideoClassifier:
    """Build a recognition model on a frozen tower; weights of the tower from a local file if given."""
    p = _checked_preset(PRESETS, preset, kind, "recognition")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    clip = build_clip(p.backbone, checkpoint, device)
    backbone = FrozenBackbone(clip.visual, attn_backend, frozen_dtype)
    with torch.device(device):
        if kind == "meanpool":
            return MeanPoolProbe(backbone, num_classes)
        dropout = p.head_dropout if dropout is None else dropout
        return Side4VideoClassifier(backbone, p.side_dim, p.side_layers, num_classes, dropout, temporal_impl)


def create_retrieval_model(
    preset: str,
    kind: str = "side4video",
    matching: str = "token",
    checkpoint: str | None = None,
    attn_backend: str = "sdpa",
    device: str | torch.device = "cpu",
    frozen_dtype: torch.dtype | None = None,
    temporal_impl: str = "auto",
) -> VideoTextRetrieval:
    """Text-video retrieval model; `kind="meanpool"` is CLIP4Clip with a frozen image tower."""
    p = _checked_preset(RETRIEVAL_PRESETS, preset, kind, "retrieval")
    clip = build_clip(p.backbone, checkpoint, device)
    backbone = FrozenBackbone(clip.visual, attn_backend, frozen_dtype)
    side_dim, side_layers = (p.side_dim, p.side_layers) if kind == "side4video" else (None, None)
    with torch.device(device):
        return VideoTextRetrieval(clip, backbone, side_dim, side_layers, matching, temporal_impl)
