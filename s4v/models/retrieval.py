"""Side4Video for text-video retrieval (paper eq. 4, s.3.4).

Frame embedding = Proj(Up(mean over patches of the side output) + Z_out[CLS] of that frame), with
Proj CLIP's own visual projection (the only trainable part of the image tower) and the CLIP text
tower trained. `Up` starts at zero, so training starts from CLIP's zero-shot frame embeddings (the
paper leans on them "to stabilize training"). The `meanpool` kind is CLIP4Clip with a frozen ViT:
no side network, the frames' projected [CLS] averaged or matched token-wise the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s4v.models.backbone import FrozenBackbone
from s4v.models.matching import MATCHING, similarity
from s4v.models.side import SideNetwork
from s4v.models.text import TextEncoder

CLIP_MODULE_PREFIXES = ("text.", "visual_proj.", "temperature.")  # pretrained CLIP parts: lr 1e-7 in the recipe


class Temperature(nn.Module):
    """CLIP's learned logit scale, as a module so every trainable tensor sits in a child module."""

    def __init__(self, logit_scale: Tensor) -> None:
        super().__init__()
        # shape (1,), not a scalar: DeepSpeed's broadcast views parameters as bytes, which 0-dim tensors refuse
        self.logit_scale = nn.Parameter(logit_scale.detach().clone().reshape(1))

    def forward(self, sim: Tensor) -> Tensor:
        return self.logit_scale.exp().clamp(max=100) * sim


class VideoTextRetrieval(nn.Module):
    """Frozen image tower (+ trainable projection), optional side network, trainable text tower."""

    def __init__(
        self,
        clip: nn.Module,
        backbone: FrozenBackbone,
        side_dim: int | None,
        side_layers: int | None,
        matching: str = "token",
        temporal_impl: str = "auto",
    ) -> None:
        super().__init__()
        if matching not in MATCHING:
            raise ValueError(f"unknown matching {matching!r}; choose one of {MATCHING}")
        self.matching = matching
        self.backbone = backbone
        shape = backbone.shape
        visual = backbone.visual
        # CLIP's visual projection, copied out of the frozen tower and trained (eq. 4's Proj).
        source = visual.trunk.head if backbone.is_eva else None
        self.visual_proj = nn.Linear(shape.width, shape.embed_dim, bias=source is not None and source.bias is not None)
        with torch.no_grad():
            self.visual_proj.weight.copy_(source.weight if source is not None else visual.proj.t())
            if self.visual_proj.bias is not None:
                self.visual_proj.bias.copy_(source.bias)
        self.side = None
        if side_dim is not None:
            self.side = SideNetwork(
                shape.width, shape.layers, shape.patch_size, shape.num_patches, side_dim, side_layers, temporal_impl
            )
            self.up = nn.Linear(side_dim, shape.width)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        self.text = TextEncoder(clip)
        self.temperature = Temperature(clip.logit_scale)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def frozen_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def parameter_groups(self, clip_lr: float, new_lr: float) -> list[dict]:
        """Separate learning rates: pretrained CLIP modules vs new modules (recipe: 1e-7 and 1e-4)."""
        clip, new = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (clip if name.startswith(CLIP_MODULE_PREFIXES) else new).append(p)
        groups = [{"params": clip, "lr": clip_lr}, {"params": new, "lr": new_lr}]
        return [g for g in groups if g["params"]]  # CLIP4Clip-frozen has no new module

    def encode_video(self, video: Tensor) -> Tensor:
        """(B, T, 3, H, W) -> L2-normalised frame embeddings (B, T, E)."""
        b, t = video.shape[:2]
        dtype = self.visual_proj.weight.dtype
        if self.side is None:
            frame = self.backbone(video.flatten(0, 1), project=False).to(dtype)
        else:
            s, x = self.side(video, self.backbone)
            frame = self.up(s.mean(2)).flatten(0, 1) + self.backbone.pool(x, project=False).to(dtype)
        return F.normalize(self.visual_proj(frame).view(b, t, -1), dim=-1)

    def encode_text(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Normalised token features (B, L, E), validity mask, EOT index."""
        feats, mask, eot = self.text(tokens)
        return F.normalize(feats, dim=-1), mask, eot

    def forward(self, video: Tensor, tokens: Tensor) -> Tensor:
        """Scaled (text, video) similarity logits of a batch of matching pairs."""
        frames = self.encode_video(video)
        text, mask, eot = self.encode_text(tokens)
        return self.temperature(similarity(self.matching, text, mask, eot, frames))


def symmetric_info_nce(logits: Tensor) -> Tensor:
    """InfoNCE in both directions over a batch whose i-th text matches the i-th video."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
