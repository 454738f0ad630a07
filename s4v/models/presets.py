"""`create_model` and `create_retrieval_model`: a preset of the architecture table built into a model.

Training, evaluation, `s4v info`, `s4v plan` and the memory tables all build through these two
factories; the presets themselves (paper Table 1) live in `s4v.models.architectures`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import get_args

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from s4v.core.choices import AttnBackend, CompileFrozen, Matching, ModelKind, Task
from s4v.models.architectures import PRESETS, Preset
from s4v.models.backbone import FrozenBackbone, build_clip
from s4v.models.classifier import MeanPoolProbe, Side4VideoClassifier, VideoClassifier
from s4v.models.retrieval import VideoTextRetrieval
from s4v.models.sharding import shard_frozen_blocks
from s4v.models.side_spec import SideSpec

MODEL_KINDS: tuple[ModelKind, ...] = get_args(ModelKind)


def _checked_preset(preset: str, kind: str, task: Task) -> Preset:
    if preset not in PRESETS or PRESETS[preset].task != task:
        names = sorted(n for n, p in PRESETS.items() if p.task == task)
        raise ValueError(f"unknown {task} preset {preset!r}; choose one of {names}")
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {MODEL_KINDS}")
    return PRESETS[preset]


def _shard(mesh: DeviceMesh | None, compile_frozen: CompileFrozen) -> Callable[[nn.Module], None] | None:
    if mesh is None:
        return None
    if compile_frozen != "none":  # Dynamo would trace FSDP2's gather hooks into every block's graph
        raise ValueError("a sharded frozen tower runs eagerly: compile_frozen must be 'none'")
    return shard_frozen_blocks(mesh)


def _side_spec(preset: str, kind: ModelKind, side: SideSpec | None) -> SideSpec | None:
    """The side network to build: `side`, or the preset's (None); a model without a side network takes none."""
    if kind != "side4video":
        if side is not None:
            raise ValueError(f"side: the {kind} model has no side network")
        return None
    if side is None:
        return SideSpec.of_preset(preset)
    form = PRESETS[preset].tower.block_form
    if side.form != form:
        raise ValueError(f"side.form: {side.form!r}, but the side blocks of preset {preset!r} are {form!r}")
    return side


def create_model(
    preset: str,
    num_classes: int,
    kind: ModelKind = "side4video",
    checkpoint: str | None = None,
    attn_backend: AttnBackend = "sdpa",
    device: str | torch.device = "cpu",
    frozen_dtype: torch.dtype | None = None,
    dropout: float | None = None,
    compile_frozen: CompileFrozen = "none",
    frozen_mesh: DeviceMesh | None = None,
    side: SideSpec | None = None,
    side_seed: int | None = None,
) -> VideoClassifier:
    """Build a recognition model on a frozen tower; weights of the tower from a local file if given.

    `side` is the side network (None: the preset's; `SideSpec.of_preset` changes it: Table 9, `s4v plan`,
    side-block checkpointing, temporal kernels); `compile_frozen` is the torch.compile mode of the frozen
    blocks (`FrozenBackbone`); `frozen_mesh` shards the frozen blocks over its ranks (`s4v.models.sharding`;
    None: each rank holds the whole tower); `side_seed` reseeds torch's generator before the trainable
    modules are made, so their init does not depend on the tower's.
    """
    p = _checked_preset(preset, kind, "recognition")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    side = _side_spec(preset, kind, side)  # refused for a model without a side network, before any build
    # Only the visual tower is made real (the text tower stays on the meta device), directly in frozen_dtype.
    clip = build_clip(p.backbone, checkpoint, device, frozen_dtype, ("visual",), _shard(frozen_mesh, compile_frozen))
    backbone = FrozenBackbone(clip.visual, attn_backend, frozen_dtype, compile_frozen)
    if side_seed is not None:
        torch.manual_seed(side_seed)
    if kind == "meanpool":
        with torch.device(device):
            return MeanPoolProbe(backbone, num_classes)
    return side_classifier(backbone, preset, num_classes, side, device, dropout)


def side_classifier(
    backbone: FrozenBackbone,
    preset: str,
    num_classes: int,
    side: SideSpec | None = None,
    device: str | torch.device = "cpu",
    dropout: float | None = None,
) -> Side4VideoClassifier:
    """A side network (None: the preset's) and the preset's head on an existing tower (`create_model`'s; a
    sweep's further members)."""
    p = _checked_preset(preset, "side4video", "recognition")
    spec = _side_spec(preset, "side4video", side)
    with torch.device(device):
        return Side4VideoClassifier(backbone, spec, num_classes, p.head_dropout if dropout is None else dropout)


def create_retrieval_model(
    preset: str,
    kind: ModelKind = "side4video",
    matching: Matching = "wti",
    checkpoint: str | None = None,
    attn_backend: AttnBackend = "sdpa",
    device: str | torch.device = "cpu",
    frozen_dtype: torch.dtype | None = None,
    compile_frozen: CompileFrozen = "none",
    frozen_mesh: DeviceMesh | None = None,
    side: SideSpec | None = None,
) -> VideoTextRetrieval:
    """Text-video retrieval model; `kind="meanpool"` is CLIP4Clip with a frozen image tower.

    The other arguments are `create_model`'s (the preset's side network has the reference's retrieval options).
    """
    p = _checked_preset(preset, kind, "retrieval")
    side = _side_spec(preset, kind, side)
    # The text tower (trained) stays fp32.
    clip = build_clip(p.backbone, checkpoint, device, frozen_dtype, shard=_shard(frozen_mesh, compile_frozen))
    backbone = FrozenBackbone(clip.visual, attn_backend, frozen_dtype, compile_frozen)
    with torch.device(device):
        return VideoTextRetrieval(clip, backbone, side, matching)
