"""Action-recognition models on a frozen tower: Side4Video with its GAP head, and the frozen-[CLS] probe."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from s4v.core.choices import BlockForm
from s4v.models.backbone import FrozenBackbone
from s4v.models.side import SideNetwork, batchnorm_tokens, run_side_networks
from s4v.models.side_spec import SideSpec


class RecognitionHead(nn.Module):
    """BatchNorm3d on the last side output (pre-norm form only), mean over T, H, W (GAP, eq. 3), dropout, classifier.

    The post-norm (ViT-E) side network already ends in a BatchNorm: the reference's eva_vit_model.py
    averages its last output directly, and leaves the classifier at PyTorch's default initialisation.
    """

    def __init__(self, dim: int, num_classes: int, dropout: float, form: BlockForm = "pre") -> None:
        super().__init__()
        self.bn = nn.BatchNorm3d(dim) if form == "pre" else None
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)
        if form == "pre":
            nn.init.normal_(self.fc.weight, std=0.02)
            nn.init.zeros_(self.fc.bias)

    def forward(self, s: Tensor) -> Tensor:
        if self.bn is not None:
            s = batchnorm_tokens(self.bn, s)
        return self.fc(self.dropout(s.mean(dim=(1, 2))))


class VideoClassifier(nn.Module):
    """Shared surface of the recognition models: a frozen tower plus trainable modules."""

    backbone: FrozenBackbone

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def frozen_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())


class Side4VideoClassifier(VideoClassifier):
    """Frozen tower + side network + GAP head; gradients never enter the tower."""

    def __init__(self, backbone: FrozenBackbone, spec: SideSpec, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.side = SideNetwork(backbone.shape, spec)
        self.head = RecognitionHead(spec.dim, num_classes, dropout, spec.form)

    def forward(self, video: Tensor) -> Tensor:
        """(B, T, 3, H, W) CLIP-normalised frames -> logits (B, classes)."""
        s, _ = self.side(video, self.backbone)
        return self.head(self.side.head_tokens(s))


class SideMember(nn.Module):
    """One side network and its head: the trainable part of a Side4Video classifier."""

    def __init__(self, side: SideNetwork, head: RecognitionHead) -> None:
        super().__init__()
        self.side, self.head = side, head

    def logits(self, s: Tensor) -> Tensor:
        return self.head(self.side.head_tokens(s))


class SweepClassifier(VideoClassifier):
    """K side networks with their heads on one frozen tower: one frozen pass per batch feeds them all
    (`run_side_networks`). Members share no parameter, so each one's logits and gradients are those of the
    Side4VideoClassifier made of its side network and head alone."""

    def __init__(self, backbone: FrozenBackbone, members: Sequence[SideMember]) -> None:
        super().__init__()
        self.backbone = backbone
        self.members = nn.ModuleList(members)

    @classmethod
    def of(cls, models: Sequence[Side4VideoClassifier]) -> SweepClassifier:
        """The sweep of models built on one tower (each keeps its side network and head; they are shared)."""
        if len({id(m.backbone) for m in models}) != 1:
            raise ValueError("a sweep's members must read the same frozen tower object")
        return cls(models[0].backbone, [SideMember(m.side, m.head) for m in models])

    def forward(self, video: Tensor) -> Tensor:
        """(B, T, 3, H, W) -> logits (K, B, classes), member k in row k."""
        sides, _ = run_side_networks([m.side for m in self.members], video, self.backbone)
        return torch.stack([m.logits(s) for m, s in zip(self.members, sides, strict=True)])


class MeanPoolProbe(VideoClassifier):
    """Linear probe on the frame-averaged frozen [CLS] embedding: order-invariant by construction."""

    def __init__(self, backbone: FrozenBackbone, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.shape.embed_dim, num_classes)

    def forward(self, video: Tensor) -> Tensor:
        b, t = video.shape[:2]
        with torch.no_grad():
            cls = self.backbone(video.flatten(0, 1)).view(b, t, -1).mean(1)
        return self.head(cls.to(self.head.weight.dtype))
