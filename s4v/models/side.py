"""The Side4Video spatial-temporal side network (paper s.3.3, DESIGN.md s.2, reference init).

Tokens are kept channel-last as (B, T, N, d): patch tokens only, no [CLS] in the side network.
Each block first fuses the frozen layer it reads (0.5 * s + 0.5 * Down(LN(Z)), as the reference
implementation scales it; the paper writes a plain sum), then runs temporal conv, [CLS]-shift
attention and an MLP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels import TemporalConvBranch
from s4v.models.fusion import NormDown

PROJ_DEPTH_SCALE = 24**-0.5  # reference init: out-proj and fc2 std d^-0.5 * 24^-0.5


def batchnorm_tokens(bn: nn.BatchNorm3d, s: Tensor) -> Tensor:
    """BatchNorm3d over channels of (B, T, N, d) tokens (statistics over B, T and space).

    Runs on the tokens viewed as (B*T*N, d, 1, 1, 1): same statistics as NCTHW, no strided layout
    (torch 2.14's CPU BatchNorm backward is wrong at batch 1 on the strided view; see kernels/temporal_conv.py).
    """
    b, t, n, d = s.shape
    return bn(s.reshape(b * t * n, d, 1, 1, 1)).view(b, t, n, d)


def shift_cls(cls: Tensor) -> Tensor:
    """(B, T, d) [CLS] tokens -> first half of channels from frame t+1, second half from t-1, zeros past the ends."""
    half = cls.shape[-1] // 2
    out = torch.zeros_like(cls)
    out[:, :-1, :half] = cls[:, 1:, :half]
    out[:, 1:, half:] = cls[:, :-1, half:]
    return out


def interval_layers(vit_layers: int, side_layers: int) -> list[int]:
    """Frozen layer read by each side block: every (L / l)-th layer, ending at the last (Table 9a's 'interval')."""
    if side_layers > vit_layers or vit_layers % side_layers:
        raise ValueError(f"{side_layers} side layers cannot evenly read {vit_layers} frozen layers")
    step = vit_layers // side_layers
    return [step * (k + 1) - 1 for k in range(side_layers)]


class ClsShiftAttention(nn.Module):
    """Spatial self-attention whose queries are patch tokens and keys/values also see the shifted [CLS]."""

    def __init__(self, dim: int, heads: int, shift: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.shift = shift  # False: the unshifted [CLS] (Table 9c's ablation)
        self.norm = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, s: Tensor, cls: Tensor) -> Tensor:
        b, t, n, d = s.shape
        kv_cls = shift_cls(cls) if self.shift else cls
        x = self.norm(torch.cat([kv_cls.unsqueeze(2), s], dim=2)).reshape(b * t, n + 1, d)
        w_q, w_kv = self.in_proj.weight.split([d, 2 * d])
        b_q, b_kv = self.in_proj.bias.split([d, 2 * d])
        q = F.linear(x[:, 1:], w_q, b_q).view(b * t, n, self.heads, -1).transpose(1, 2)
        k, v = F.linear(x, w_kv, b_kv).view(b * t, n + 1, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, n, d)
        return self.out_proj(out)


class SideBlock(nn.Module):
    """Fusion of one frozen layer, then temporal conv, [CLS]-shift attention and MLP, each residual."""

    def __init__(self, dim: int, vit_width: int, temporal_impl: str = "auto") -> None:
        super().__init__()
        self.fuse = NormDown(vit_width, dim)
        self.temporal = TemporalConvBranch(dim, impl=temporal_impl)
        self.attn = ClsShiftAttention(dim, heads=max(1, dim // 64))
        self.mlp_bn = nn.BatchNorm3d(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, s: Tensor, frozen: Tensor, pos: Tensor) -> Tensor:
        b, t, n, d = s.shape
        z = self.fuse(frozen).view(b, t, n + 1, d)
        s = 0.5 * s + 0.5 * z[:, :, 1:]
        s = s + self.temporal(s)
        s = s + self.attn(s + pos, z[:, :, 0])
        return s + self.mlp(batchnorm_tokens(self.mlp_bn, s))


class SideNetwork(nn.Module):
    """Stem + l side blocks; `forward` drives the frozen tower so only one frozen layer is alive at a time."""

    def __init__(
        self,
        vit_width: int,
        vit_layers: int,
        patch_size: int,
        num_patches: int,
        dim: int,
        layers: int,
        temporal_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.dim = dim
        self.read_layers = interval_layers(vit_layers, layers)
        self.stem = nn.Conv3d(
            3,
            dim,
            kernel_size=(3, patch_size, patch_size),
            stride=(1, patch_size, patch_size),
            padding=(1, 0, 0),
        )
        self.stem_bn = nn.BatchNorm3d(dim)
        self.pos = nn.Parameter(torch.empty(num_patches, dim))
        self.blocks = nn.ModuleList(SideBlock(dim, vit_width, temporal_impl) for _ in range(layers))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Reference initialisation (DESIGN.md s.2)."""
        d = self.dim
        nn.init.normal_(self.pos, std=0.01)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for blk in self.blocks:
            nn.init.normal_(blk.attn.in_proj.weight, std=d**-0.5)
            nn.init.normal_(blk.attn.out_proj.weight, std=d**-0.5 * PROJ_DEPTH_SCALE)
            nn.init.normal_(blk.mlp[0].weight, std=(2 * d) ** -0.5)
            nn.init.normal_(blk.mlp[2].weight, std=d**-0.5 * PROJ_DEPTH_SCALE)
            for lin in (blk.attn.in_proj, blk.attn.out_proj, blk.mlp[0], blk.mlp[2]):
                nn.init.zeros_(lin.bias)

    def stem_tokens(self, video: Tensor) -> Tensor:
        """(B, T, 3, H, W) -> (B, T, N, d)."""
        s = self.stem_bn(self.stem(video.transpose(1, 2)))
        return s.flatten(3).permute(0, 2, 3, 1)

    def forward(self, video: Tensor, backbone: nn.Module) -> tuple[Tensor, Tensor]:
        """Side output (B, T, N, d) and the frozen tower's last tokens (B*T, 1 + N, D)."""
        b, t = video.shape[:2]
        s = self.stem_tokens(video.to(self.stem.weight.dtype))
        x = backbone.embed(video.flatten(0, 1))
        readers = dict(zip(self.read_layers, self.blocks, strict=True))
        for index in range(len(backbone.blocks)):
            x = backbone.block(index, x)
            if index in readers:
                s = readers[index](s, x, self.pos)
        return s, x
