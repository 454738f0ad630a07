"""DiST (Qing et al., ICCV 2023), as in its official code and SSv2 configs (`vit-b16-8+16f`).

The frozen CLIP encoder sees T frames and records every layer's tokens (all kept alive, as
`RECORD_VIS_MID_FEAT` does); a light temporal encoder (width 96) runs on alpha*T = 2T frames; at
every layer an integration branch (width 384) fuses the projected spatial tokens with the
temporal features, and two spatial-temporal ada-pooling layers produce the video embedding.
Nothing backpropagates into the frozen encoder. Trainable: 18.9 M at B/16 (Table 2: 19 M).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s4v.baselines.common import QuickGELU, build_visual, embed, frozen, grid, width


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), QuickGELU(), nn.Linear(hidden, dim))


class TemporalNet(nn.Module):
    def __init__(self, dim: int, kernel: int = 3) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.fc1 = nn.Conv3d(dim, dim, (kernel, 1, 1), padding=(kernel // 2, 0, 0))
        self.act = QuickGELU()
        self.fc2 = nn.Conv3d(dim, dim, (1, 3, 3), padding=(0, 1, 1))
        self.out_act = QuickGELU()

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T', H, W)
        y = self.ln(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        return self.out_act(x + self.fc2(self.act(self.fc1(y))))


class IntegrationNet(nn.Module):
    def __init__(self, dim: int, frames: int, kernel: int = 3, temporal_ratio: float = 0.25) -> None:
        super().__init__()
        self.frames = frames
        hidden = int(dim * temporal_ratio)
        self.ln = nn.LayerNorm(dim)
        self.ffn = _mlp(dim, dim)
        self.ln_temporal = nn.LayerNorm(dim)
        self.t_fc1 = nn.Conv3d(dim, hidden, 1)
        self.t_fc2 = nn.Conv3d(hidden, hidden, (kernel, 1, 1), padding=(kernel // 2, 0, 0))
        self.t_act = QuickGELU()
        self.t_proj = nn.Conv3d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:  # (L, B*T, C), sequence first as in DiST
        length, bt, c = x.shape
        b, t = bt // self.frames, self.frames
        y = self.ln_temporal(x).view(length, b, t, c).permute(1, 3, 2, 0).reshape(b, c, t, length, 1)
        y = self.t_proj(self.t_act(self.t_fc2(self.t_fc1(y))))
        y = y.flatten(3).permute(3, 0, 2, 1).flatten(1, 2)
        return self.ffn(self.ln(x)) + y


class CrossAttention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, dim // 64)

    def forward(self, q: Tensor, kv: Tensor) -> Tensor:
        kv = self.ln(kv)
        return self.attn(self.ln(q), kv, kv, need_weights=False)[0]


class AdaPooling(nn.Module):
    def __init__(self, dim: int, frames: int) -> None:
        super().__init__()
        self.frames = frames
        self.spatial = CrossAttention(dim)
        self.spatial_ln = nn.LayerNorm(dim)
        self.spatial_mlp = _mlp(dim, 4 * dim)
        self.temporal = CrossAttention(dim)
        self.temporal_pos = nn.Parameter(torch.zeros(1, frames, dim))
        self.temporal_ln = nn.LayerNorm(dim)
        self.temporal_mlp = _mlp(dim, 4 * dim)

    def forward(self, feat: Tensor, top: Tensor, spatial: Tensor) -> tuple[Tensor, Tensor]:
        bt = feat.shape[1]
        spatial = spatial + self.spatial(spatial, feat)
        spatial = spatial + self.spatial_mlp(self.spatial_ln(spatial))
        cls = (spatial[0].reshape(bt // self.frames, self.frames, -1) + self.temporal_pos).permute(1, 0, 2)
        top = top + self.temporal(top, cls)
        top = top + self.temporal_mlp(self.temporal_ln(top))
        return top, spatial


class DiST(nn.Module):
    """Input video has alpha * T frames; the frozen encoder reads every alpha-th one."""

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        num_frames: int = 8,
        alpha: int = 2,
        integration_dim: int = 384,
        temporal_dim: int = 96,
        pooling_layers: int = 2,
        device="cpu",
    ) -> None:
        super().__init__()
        self.visual = frozen(build_visual(backbone, device))
        self.num_frames, self.alpha = num_frames, alpha
        d, c, ct = width(self.visual), integration_dim, temporal_dim
        layers, patch = self.visual.transformer.layers, self.visual.patch_size[0]
        with torch.device(device):
            self.temporal_stem = nn.Conv3d(3, ct, (5, patch, patch), stride=(1, patch, patch), padding=(2, 0, 0))
            self.input_linears = nn.ModuleList(nn.Linear(d, c) for _ in range(layers))
            self.to_temporal = nn.ModuleList(nn.Linear(c, ct) for _ in range(layers))
            self.to_integration = nn.ModuleList(
                nn.Conv3d(ct, c, (alpha, 1, 1), stride=(alpha, 1, 1)) for _ in range(layers)
            )
            self.integration_cls = nn.ParameterList(
                nn.Parameter(torch.zeros(1, 1, num_frames, c)) for _ in range(layers)
            )
            self.temporal_nets = nn.ModuleList(TemporalNet(ct) for _ in range(layers))
            self.integration_nets = nn.ModuleList(IntegrationNet(c, num_frames) for _ in range(layers))
            self.pooling = nn.ModuleList(AdaPooling(c, num_frames) for _ in range(pooling_layers))
            self.proj_spatial_cls = nn.Linear(d, c)
            self.ln_post = nn.LayerNorm(c)
            self.proj = nn.Linear(c, self.visual.output_dim, bias=False)
            self.agg_cls = nn.Parameter(torch.zeros(1, 1, c))
            self.agg_spatial_cls = nn.Parameter(torch.zeros(1, 1, c))
            # DiST classifies against frozen text embeddings of the class names.
            self.class_text = nn.Parameter(torch.zeros(num_classes, self.visual.output_dim), requires_grad=False)

    def forward(self, video: Tensor) -> Tensor:
        b = video.shape[0]
        t, (h, w) = self.num_frames, grid(self.visual)
        with torch.no_grad():
            x = embed(self.visual, video[:, :: self.alpha])
            mids = []
            for block in self.visual.transformer.resblocks:
                x = block(x)
                mids.append(x.transpose(0, 1))  # (1 + N, B*T, D)
        xt = self.temporal_stem(video.transpose(1, 2).to(self.temporal_stem.weight.dtype))
        res = 0.0
        for i, mid in enumerate(mids):
            xt = self.temporal_nets[i](xt)
            feat = self.input_linears[i](mid) + res
            length, bt, c = feat.shape
            up = self.to_temporal[i](feat[1:]).view(length - 1, b, t, -1).permute(1, 3, 2, 0).reshape(b, -1, t, h, w)
            up = F.interpolate(up, size=(t * self.alpha, h, w), mode="nearest")
            down = self.to_integration[i](xt).flatten(3).permute(3, 0, 2, 1)
            down = torch.cat([self.integration_cls[i].expand(1, b, t, c), down], dim=0).flatten(1, 2)
            updated = feat + down
            res = self.integration_nets[i](updated)
            xt = xt + up
        current = res + updated
        top = self.agg_cls.expand(1, b, -1)
        spatial = self.agg_spatial_cls.expand(1, b * t, -1)
        for pool in self.pooling:
            top, spatial = pool(current, top, spatial)
        spatial_cls = self.proj_spatial_cls(mids[-1][0].reshape(b, t, -1).mean(1))
        emb = self.proj(self.ln_post(top[0] + spatial_cls))
        return F.normalize(emb, dim=-1) @ F.normalize(self.class_text, dim=-1).t() * 100.0
