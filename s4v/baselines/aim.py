"""AIM (Yang et al., ICLR 2023), as in its official ViT-CLIP code with `num_tadapter=2` (SSv2 setting).

Each frozen block gets four bottleneck adapters (D -> D/4 -> D, GELU): T-Adapter-in and T-Adapter
around a *temporal* attention that reuses the frozen attention weights on (B*N, T, D) sequences,
an S-Adapter after the spatial attention and an MLP-Adapter parallel to the MLP (scale 0.5), plus
a temporal position embedding. The frozen attention runs twice per block and backward crosses all
of them. Trainable: adapters, temporal embedding, ln_post, classifier (14.3 M at B/16).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from s4v.baselines.common import VideoHead, build_visual, cls_out, embed, frozen, width


class Adapter(nn.Module):
    def __init__(self, dim: int, ratio: float = 0.25, skip: bool = True) -> None:
        super().__init__()
        self.skip = skip
        self.fc1 = nn.Linear(dim, int(dim * ratio))
        self.act = nn.GELU()
        self.fc2 = nn.Linear(int(dim * ratio), dim)

    def forward(self, x: Tensor) -> Tensor:
        y = self.fc2(self.act(self.fc1(x)))
        return x + y if self.skip else y


class AIMBlock(nn.Module):
    def __init__(self, block: nn.Module, num_frames: int, scale: float = 0.5) -> None:
        super().__init__()
        dim = block.ln_1.normalized_shape[0]
        self.block = block
        self.num_frames = num_frames
        self.scale = scale
        self.t_adapter_in = Adapter(dim)
        self.t_adapter = Adapter(dim, skip=False)
        self.s_adapter = Adapter(dim)
        self.mlp_adapter = Adapter(dim, skip=False)
        for a in (self.t_adapter, self.s_adapter, self.mlp_adapter):
            nn.init.zeros_(a.fc2.weight)  # official init: new paths start at zero
            nn.init.zeros_(a.fc2.bias)

    def attention(self, x: Tensor) -> Tensor:
        return self.block.attn(x, x, x, need_weights=False)[0]

    def forward(self, x: Tensor) -> Tensor:
        blk, t = self.block, self.num_frames
        bt, n, d = x.shape
        xt = x.view(bt // t, t, n, d).transpose(1, 2).reshape(-1, t, d)  # 'n (b t) d -> t (b n) d'
        xt = self.t_adapter(self.attention(self.t_adapter_in(blk.ln_1(xt))))
        x = x + xt.view(bt // t, n, t, d).transpose(1, 2).reshape(bt, n, d)
        x = x + self.s_adapter(self.attention(blk.ln_1(x)))
        xn = blk.ln_2(x)
        return x + blk.mlp(xn) + self.scale * self.mlp_adapter(xn)


class AIMViT(nn.Module):
    def __init__(self, backbone: str, num_classes: int, num_frames: int = 8, device="cpu") -> None:
        super().__init__()
        self.visual = frozen(build_visual(backbone, device))
        dim = width(self.visual)
        self.num_frames = num_frames
        with torch.device(device):
            self.blocks = nn.ModuleList(AIMBlock(b, num_frames) for b in self.visual.transformer.resblocks)
            self.temporal_embedding = nn.Parameter(torch.zeros(1, num_frames, 1, dim))
            self.head = VideoHead(dim, num_classes, num_frames)
        self.visual.ln_post.requires_grad_(True)

    def forward(self, video: Tensor) -> Tensor:
        x = embed(self.visual, video)
        bt, n, d = x.shape
        x = (x.view(bt // self.num_frames, self.num_frames, n, d) + self.temporal_embedding).view(bt, n, d)
        for blk in self.blocks:
            x = blk(x)
        return self.head(cls_out(self.visual, x))
