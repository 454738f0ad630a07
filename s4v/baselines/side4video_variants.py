"""Table 9 ablations of Side4Video on top of the core model (s4v.models), without touching it.

Options (defaults are the paper's choices and reproduce `Side4VideoClassifier` exactly):
- temporal: "conv" (BN3d + depthwise-separable temporal conv) or "attention" (LayerNorm + MHA over T
  for every spatial position, Table 9b);
- cls_shift: shift the frozen [CLS] channels across adjacent frames before it joins K / V (Table 9c);
- representation: "gap" over patch tokens, "vit-cls" (the Down-projected frozen [CLS] carried as a
  side token, fused like the patches) or "extra-cls" (a learnable side token), Table 9d;
- layers / dim of the side network (Tables 9e, 9f);
- fusion: the core's `NormDown` (keeps only Z for backward) or the reference code's eager
  `Linear(LayerNorm(Z))` (also keeps the normalised features), to compare with the paper's numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s4v.models import PRESETS, create_model
from s4v.models.classifier import Side4VideoClassifier
from s4v.models.side import batchnorm_tokens

REPRESENTATIONS = ("gap", "vit-cls", "extra-cls")


class TemporalAttention(nn.Module):
    """Temporal self-attention branch (no residual inside), the alternative to the temporal conv."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.heads = max(1, dim // 64)
        self.norm = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, s: Tensor) -> Tensor:
        b, t, n, d = s.shape
        x = self.norm(s).transpose(1, 2).reshape(b * n, t, d)
        q, k, v = self.in_proj(x).view(b * n, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, t, d)
        return self.out_proj(out.transpose(1, 2))


class Side4VideoVariant(nn.Module):
    """A Side4Video classifier whose side loop applies the Table 9 options."""

    def __init__(
        self,
        backbone: str = "b16",
        layers: int = 12,
        dim: int = 320,
        num_classes: int = 174,
        temporal: str = "conv",
        cls_shift: bool = True,
        representation: str = "gap",
        device: str | torch.device = "cpu",
        base_preset: str | None = None,
        temporal_impl: str = "reference",
        fusion: str = "normdown",
    ) -> None:
        super().__init__()
        if temporal not in ("conv", "attention"):
            raise ValueError(f"unknown temporal module {temporal!r}")
        if fusion not in ("normdown", "eager"):
            raise ValueError(f"unknown fusion {fusion!r}; choose 'normdown' or 'eager'")
        self.fusion = fusion
        if representation not in REPRESENTATIONS:
            raise ValueError(f"unknown representation {representation!r}; choose one of {REPRESENTATIONS}")
        preset = base_preset or (f"{backbone}-light" if f"{backbone}-light" in PRESETS else backbone)
        # "reference" (eager PyTorch) by default: the same ops on meta and on CUDA, so accounting and
        # measurement compare like for like; "auto" picks the fused Triton branch on CUDA.
        self.model = _create_with_side(preset, num_classes, layers, dim, device, temporal_impl)
        for blk in self.model.side.blocks:
            blk.attn.shift = cls_shift
        self.representation = representation
        if temporal == "attention":
            with torch.device(device):
                for blk in self.model.side.blocks:
                    blk.temporal = TemporalAttention(dim)
        if representation == "extra-cls":
            with torch.device(device):
                self.extra_cls = nn.Parameter(torch.zeros(dim))
            nn.init.normal_(self.extra_cls, std=0.02)

    def forward(self, video: Tensor) -> Tensor:
        side, backbone = self.model.side, self.model.backbone
        b, t = video.shape[:2]
        s = side.stem_tokens(video.to(side.stem.weight.dtype))
        with_cls = self.representation != "gap"
        if self.representation == "extra-cls":
            s = torch.cat([self.extra_cls.to(s.dtype).expand(b, t, 1, -1), s], dim=2)
        x = backbone.embed(video.flatten(0, 1))
        readers = dict(zip(side.read_layers, side.blocks, strict=True))
        first = True
        for index in range(len(backbone.blocks)):
            x = backbone.block(index, x)
            if index in readers:
                s = self._block(readers[index], s, x, side.pos, with_cls, first)
                first = False
        return self.model.head(s[:, :, :1] if with_cls else s)

    def _block(self, blk: nn.Module, s: Tensor, frozen: Tensor, pos: Tensor, with_cls: bool, first: bool) -> Tensor:
        b, t, _, d = s.shape
        # "eager" is the reference code's Linear(LayerNorm(Z)): it also keeps the normalised copy for backward.
        fuse = blk.fuse
        z = (fuse(frozen) if self.fusion == "normdown" else fuse.down(fuse.norm(frozen))).view(b, t, -1, d)
        if self.representation == "gap":
            s = 0.5 * s + 0.5 * z[:, :, 1:]
        elif self.representation == "vit-cls":
            if first:  # the side stem has no [CLS]: the slot starts from the frozen one
                s = torch.cat([z[:, :, :1], s], dim=2)
            s = 0.5 * s + 0.5 * z
        else:  # extra-cls: the learnable slot is not fused
            s = torch.cat([s[:, :, :1], 0.5 * s[:, :, 1:] + 0.5 * z[:, :, 1:]], dim=2)
        s = s + blk.temporal(s)
        if with_cls:
            pos = torch.cat([pos.new_zeros(1, d), pos], dim=0)
        s = s + blk.attn(s + pos, z[:, :, 0])
        return s + blk.mlp(batchnorm_tokens(blk.mlp_bn, s))


_META_TOWERS: dict[str, nn.Module] = {}


def _frozen_tower(preset: str, device) -> nn.Module:
    """The preset's frozen tower; meta towers are built once (EVA02-E-14 takes ~80 s even on meta)."""
    if torch.device(device).type != "meta":
        return create_model(preset, 1, kind="meanpool", device=device).backbone
    if preset not in _META_TOWERS:
        _META_TOWERS[preset] = create_model(preset, 1, kind="meanpool", device=device).backbone
    return _META_TOWERS[preset].float()  # undo any cast a previous low-precision accounting applied


def _create_with_side(preset: str, num_classes: int, layers: int, dim: int, device, temporal_impl: str) -> nn.Module:
    """The core classifier on `preset`'s tower with a side network of `layers` x `dim`."""
    backbone = _frozen_tower(preset, device)
    with torch.device(device):
        return Side4VideoClassifier(backbone, dim, layers, num_classes, PRESETS[preset].head_dropout, temporal_impl)
