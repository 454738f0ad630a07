"""ST-Adapter (Pan et al., NeurIPS 2022), as in its official CLIP code.

One adapter before the attention of every frozen block: Linear D -> 384, depthwise (3,1,1) Conv3d
over time on the patch grid, Linear 384 -> D, added to the patch tokens ([CLS] untouched). The
adapters sit *inside* the tower, so backward runs through every frozen block: that is the memory
cost Side4Video avoids. Trainable: adapters + classifier (7.2 M at B/16, 174 classes).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from s4v.baselines.common import VideoHead, build_visual, cls_out, embed, frozen, square_side, width


class STAdapter(nn.Module):
    def __init__(self, dim: int, bottleneck: int = 384, num_frames: int = 8, kernel: tuple[int, int, int] = (3, 1, 1)):
        super().__init__()
        self.num_frames = num_frames
        self.fc1 = nn.Linear(dim, bottleneck)
        self.conv = nn.Conv3d(bottleneck, bottleneck, kernel, padding=tuple(k // 2 for k in kernel), groups=bottleneck)
        self.fc2 = nn.Linear(bottleneck, dim)
        for p in (self.conv.weight, self.conv.bias, self.fc1.bias, self.fc2.bias):
            nn.init.zeros_(p)  # official init: the adapter starts as the identity

    def forward(self, x: Tensor) -> Tensor:
        bt, length, _ = x.shape
        t, c = self.num_frames, self.conv.in_channels
        side = square_side(length - 1)
        y = self.fc1(x[:, 1:])
        y = y.view(bt // t, t, side, side, c).permute(0, 4, 1, 2, 3).contiguous()
        y = self.conv(y).permute(0, 2, 3, 4, 1).contiguous().view(bt, length - 1, c)
        # The official code adds in place (x[:, 1:] += ...); out of place here so fp32 runs stay legal.
        return torch.cat([x[:, :1], x[:, 1:] + self.fc2(y)], dim=1)


class STAdapterViT(nn.Module):
    """Frozen CLIP ViT with an ST-Adapter before the attention of every block."""

    def __init__(self, backbone: str, num_classes: int, num_frames: int = 8, bottleneck: int = 384, device="cpu"):
        super().__init__()
        self.visual = frozen(build_visual(backbone, device))
        dim = width(self.visual)
        with torch.device(device):
            self.adapters = nn.ModuleList(
                STAdapter(dim, bottleneck, num_frames) for _ in self.visual.transformer.resblocks
            )
            self.head = VideoHead(dim, num_classes, num_frames)

    def forward(self, video: Tensor) -> Tensor:
        x = embed(self.visual, video)
        for adapter, block in zip(self.adapters, self.visual.transformer.resblocks, strict=True):
            x = block(adapter(x))
        return self.head(cls_out(self.visual, x))
