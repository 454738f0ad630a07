"""Workloads of the paper's memory tables: every method as a `Workload` at the paper's batch and frames.

Method names: baselines (`full`, `frozen-meanpool`, `st-adapter`, `aim`, `evl`, `dist`), Side4Video
(`ours-light`, `ours`, or `side4video` with explicit layers / dim and Table 9 options; `members` K > 1: a
sweep of K identical side networks on one tower), retrieval (`clip4clip`, `clip4clip-frozen`, `ours-retrieval`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s4v.baselines import CLIP4Clip, build_baseline, input_frames
from s4v.memory.step import Workload
from s4v.models.architectures import BACKBONES, find_preset
from s4v.models.classifier import SweepClassifier
from s4v.models.presets import create_model, create_retrieval_model
from s4v.models.retrieval import symmetric_info_nce
from s4v.models.side import SideOptions
from s4v.models.side_spec import SideSpec

RETRIEVAL_TEXT_LENGTH = 32  # CLIP4Clip / Side4Video max_words
SIDE4VIDEO = ("ours", "ours-light", "side4video")
RETRIEVAL = ("clip4clip", "clip4clip-frozen", "ours-retrieval")


@dataclass(frozen=True)
class MethodSpec:
    """One row of a table: a method on a backbone at a batch size, plus Side4Video options.

    `members`: Side4Video side networks (with their heads) trained together on the one frozen tower
    (`SweepClassifier`); 1 is the plain model.
    """

    method: str
    backbone: str
    batch: int  # clips the step feeds the model: a training batch's videos x data.num_repeats
    frames: int = 8
    num_classes: int = 174
    options: dict = field(default_factory=dict)
    members: int = 1

    def __post_init__(self) -> None:
        if self.members < 1:
            raise ValueError(f"members must be positive, got {self.members}")
        if self.members > 1 and self.method not in SIDE4VIDEO:
            raise ValueError(f"{self.method}: only Side4Video side networks share a tower as sweep members")

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        label = f"{self.method}[{opts}]" if opts else self.method
        return f"{self.members} x {label}" if self.members > 1 else label


def _classification_loss(model: nn.Module, inputs: tuple[Tensor, ...]) -> Tensor:
    video, labels = inputs
    return F.cross_entropy(model(video).float(), labels, label_smoothing=0.1)


def _sweep_loss(model: nn.Module, inputs: tuple[Tensor, ...]) -> Tensor:
    """The members train independently: the sum of their losses gives each one its own gradients."""
    video, labels = inputs
    logits = model(video).float()  # (K, B, classes)
    return torch.stack([F.cross_entropy(z, labels, label_smoothing=0.1) for z in logits]).sum()


def _retrieval_loss(model: nn.Module, inputs: tuple[Tensor, ...]) -> Tensor:
    video, text = inputs
    return symmetric_info_nce(model(video, text).float())


def _side_spec(preset: str, spec: MethodSpec) -> SideSpec:
    """`preset`'s side network with the spec's `layers` / `dim` / `checkpoint` (side blocks recomputed in
    backward), `temporal_impl` and Table 9 options in place of the preset's.

    The accounting uses the eager temporal branch by default: the same ops on meta and on CUDA, so
    accounting and measurement compare like for like ("auto" would pick the fused Triton branch on CUDA).
    """
    opts = dict(spec.options)
    layers, dim, checkpoint = opts.pop("layers", None), opts.pop("dim", None), opts.pop("checkpoint", None)
    temporal_impl = opts.pop("temporal_impl", "reference")
    options = SideOptions(**opts) if opts else None
    return SideSpec.of_preset(
        preset, dim=dim, layers=layers, options=options, checkpoint=checkpoint, temporal_impl=temporal_impl
    )


def _side4video(spec: MethodSpec, device: torch.device) -> nn.Module:
    """Through the training factory: the backbone's "ours" (largest) or "ours-light" (smallest) preset,
    its side network as `_side_spec` changes it."""
    preset = find_preset("recognition", spec.backbone, largest=spec.method == "ours")
    return create_model(preset, spec.num_classes, device=device, side=_side_spec(preset, spec))


def _sweep(spec: MethodSpec, device: torch.device) -> nn.Module:
    """`spec.members` copies of the spec's Side4Video model on its one tower (the copies keep the backbone)."""
    model = _side4video(spec, device)
    if spec.members == 1:
        return model
    copies = [copy.deepcopy(model, memo={id(model.backbone): model.backbone}) for _ in range(spec.members - 1)]
    return SweepClassifier.of([model, *copies])


def _build(spec: MethodSpec, device: torch.device) -> nn.Module:
    m = spec.method
    if m in SIDE4VIDEO:
        return _sweep(spec, device)
    if m in ("clip4clip", "clip4clip-frozen"):
        return CLIP4Clip(spec.backbone, spec.frames, freeze_visual=m.endswith("frozen"), device=device)
    if m == "ours-retrieval":
        preset = find_preset("retrieval", spec.backbone)
        return create_retrieval_model(preset, device=device, side=_side_spec(preset, spec))
    return build_baseline(m, spec.backbone, spec.num_classes, spec.frames, device)


def text_length(model: nn.Module) -> int:
    """Caption tokens per step: max_words 32, unless the text tower only accepts its full context."""
    encoder = getattr(model, "text", None)
    if encoder is not None and hasattr(encoder, "context_length"):
        return encoder.context_length
    return RETRIEVAL_TEXT_LENGTH


def workload(spec: MethodSpec) -> Workload:
    size = BACKBONES[spec.backbone].image_size
    retrieval = spec.method in RETRIEVAL
    frames = spec.frames if retrieval or spec.method in SIDE4VIDEO else input_frames(spec.method, spec.frames)
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

    loss = _retrieval_loss if retrieval else _sweep_loss if spec.members > 1 else _classification_loss
    return Workload(spec.label, build, inputs, loss)
