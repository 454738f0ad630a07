"""Workloads of the paper's memory tables: every method as a `Workload` at the paper's batch and frames.

Method names: baselines (`full`, `frozen-meanpool`, `st-adapter`, `aim`, `evl`, `dist`), Side4Video
(`ours-light`, `ours`, or `side4video` with explicit layers / dim and Table 9 options), retrieval
(`clip4clip`, `clip4clip-frozen`, `ours-retrieval`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s4v.baselines import CLIP4Clip, build_baseline, input_frames, symmetric_infonce
from s4v.baselines.side4video_variants import Side4VideoVariant
from s4v.memory.step import Workload

logging.getLogger().setLevel(logging.ERROR)  # open_clip warns on every random-init build

IMAGE_SIZE = {"b32": 224, "b16": 224, "l14": 224, "e14": 224, "s4v-tiny-vit": 64, "tiny": 64}
# Side4Video configurations (Table 1): backbone -> (layers, dim) of the light and full side networks.
SIDE_CONFIGS: dict[str, dict[str, tuple[int, int]]] = {
    "b16": {"ours-light": (6, 192), "ours": (12, 320)},
    "l14": {"ours-light": (12, 320), "ours": (24, 512)},
    "e14": {"ours-light": (32, 576)},
}
RETRIEVAL_TEXT_LENGTH = 32  # CLIP4Clip / Side4Video max_words


@dataclass(frozen=True)
class MethodSpec:
    """One row of a table: a method on a backbone at a batch size, plus Side4Video options."""

    method: str
    backbone: str
    batch: int
    frames: int = 8
    num_classes: int = 174
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.method}[{opts}]" if opts else self.method


def _classification_loss(model: nn.Module, inputs: tuple[Tensor, ...]) -> Tensor:
    video, labels = inputs
    return F.cross_entropy(model(video).float(), labels, label_smoothing=0.1)


def _retrieval_loss(model: nn.Module, inputs: tuple[Tensor, ...]) -> Tensor:
    video, text = inputs
    return symmetric_infonce(model(video, text).float())


def _side_options(spec: MethodSpec) -> dict:
    opts = dict(spec.options)
    if spec.method in ("ours", "ours-light"):
        layers, dim = SIDE_CONFIGS[spec.backbone][spec.method]
        opts.setdefault("layers", layers)
        opts.setdefault("dim", dim)
    return opts


def _build(spec: MethodSpec, device: torch.device) -> nn.Module:
    m = spec.method
    if m in ("ours", "ours-light", "side4video"):
        opts = _side_options(spec)
        return Side4VideoVariant(spec.backbone, num_classes=spec.num_classes, device=device, **opts)
    if m in ("clip4clip", "clip4clip-frozen"):
        return CLIP4Clip(spec.backbone, spec.frames, freeze_visual=m.endswith("frozen"), device=device)
    if m == "ours-retrieval":
        # Hook for the retrieval model (issue 7): the core factory, d = 320, token-wise matching.
        from s4v.models import create_retrieval_model

        return create_retrieval_model(
            spec.backbone, device=device, **dict(dict(temporal_impl="reference"), **spec.options)
        )
    return build_baseline(m, spec.backbone, spec.num_classes, spec.frames, device)


def text_length(model: nn.Module) -> int:
    """Caption tokens per step: max_words 32, unless the text tower only accepts its full context."""
    encoder = getattr(model, "text", None)
    if encoder is not None and hasattr(encoder, "context_length"):
        return encoder.context_length
    return RETRIEVAL_TEXT_LENGTH


def workload(spec: MethodSpec) -> Workload:
    size = IMAGE_SIZE.get(spec.backbone, 224)
    retrieval = spec.method in ("clip4clip", "clip4clip-frozen", "ours-retrieval")
    frames = (
        spec.frames
        if retrieval or spec.method.startswith(("ours", "side4video"))
        else input_frames(spec.method, spec.frames)
    )
    built: dict[str, nn.Module] = {}

    def build(device: torch.device) -> nn.Module:
        built["model"] = _build(spec, device)
        return built["model"]

    def inputs(device: torch.device) -> tuple[Tensor, ...]:
        video = torch.randn(spec.batch, frames, 3, size, size, device=device)
        if retrieval:
            length = text_length(built["model"])
            return video, torch.randint(1, 49407, (spec.batch, length), device=device)
        return video, torch.randint(0, spec.num_classes, (spec.batch,), device=device)

    return Workload(spec.label, build, inputs, _retrieval_loss if retrieval else _classification_loss)
