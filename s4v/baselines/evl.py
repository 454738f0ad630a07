"""EVL (Lin et al., ECCV 2022, "Frozen CLIP models are efficient video learners"), as in its official code.

The CLIP tower is frozen in fp16 (`backbone_mode='freeze_fp16'`) and run without autograd,
returning every layer's tokens and attention q / k (`return_all_features`). The last
`decoder_layers` of them are cast to fp32 and feed a transformer decoder whose single query
cross-attends to all T x (1 + N) tokens, after a depthwise temporal conv, a temporal position
embedding and the temporal cross-attention built from adjacent frames' frozen q / k. The decoder
is as deep as the tower here (12 / 24 layers: 98.8 M / 350 M trainable, Table 2 lists 89 M / 350 M).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s4v.baselines.common import QuickGELU, build_visual, embed, frozen, grid, width


class TemporalCrossAttention(nn.Module):
    """Attention maps between adjacent frames' frozen q / k, mixed by learned relative-position weights."""

    def __init__(self, spatial: tuple[int, int], dim: int) -> None:
        super().__init__()
        h, w = spatial
        self.w1 = nn.Parameter(torch.zeros((2 * h - 1) * (2 * w - 1), dim))
        self.w2 = nn.Parameter(torch.zeros((2 * h - 1) * (2 * w - 1), dim))
        qi, qj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        qi, qj = qi.flatten(), qj.flatten()
        idx = (qi[:, None] - qi[None, :] + h - 1) * (2 * w - 1) + (qj[:, None] - qj[None, :] + w - 1)
        self.register_buffer("idx", idx, persistent=False)

    def half(self, q: Tensor, k: Tensor, w: Tensor) -> Tensor:
        q, k = q[:, :, 1:], k[:, :, 1:]
        attn = torch.einsum("ntqhd,ntkhd->ntqkh", q / (q.shape[-1] ** 0.5), k)
        attn = attn.softmax(dim=-2).mean(dim=-1)
        return torch.einsum("ntqk,qkc->ntqc", attn, w[self.idx])

    def forward(self, q: Tensor, k: Tensor) -> Tensor:
        n, t, length, _, _ = q.shape
        out = torch.zeros(n, t, length, self.w1.shape[-1], device=q.device, dtype=self.w1.dtype)
        out[:, 1:, 1:] += self.half(q[:, 1:], k[:, :-1], self.w1)
        out[:, :-1, 1:] += self.half(q[:, :-1], k[:, 1:], self.w2)
        return out


class DecoderLayer(nn.Module):
    """EVL's decoder layer: query attends to frame tokens (separate q/k/v projections), then MLP."""

    def __init__(self, dim: int, heads: int, mlp_factor: float = 4.0, dropout: float = 0.5) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        hidden = int(dim * mlp_factor)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), QuickGELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        n, h = x.shape[0], self.heads
        y = self.norm3(y)
        q = self.q_proj(self.norm1(x)).view(n, x.shape[1], h, -1)
        k = self.k_proj(y).view(n, y.shape[1], h, -1)
        v = self.v_proj(y).view(n, y.shape[1], h, -1)
        aff = torch.einsum("nqhc,nkhc->nqkh", q / (q.shape[-1] ** 0.5), k).softmax(dim=-2)
        mix = torch.einsum("nqlh,nlhc->nqhc", aff, v)
        x = x + self.out_proj(mix.flatten(-2))
        return x + self.mlp(self.norm2(x))


def _frozen_block(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One frozen CLIP block that also returns its attention q and k (EVL's `return_all_features`)."""
    attn = block.attn
    d, h = attn.embed_dim, attn.num_heads
    w_q, w_k, w_v = attn.in_proj_weight.split(d)
    b_q, b_k, b_v = attn.in_proj_bias.split(d)
    y = block.ln_1(x)
    n, length, _ = y.shape
    q = F.linear(y, w_q, b_q).view(n, length, h, -1)
    k = F.linear(y, w_k, b_k).view(n, length, h, -1)
    v = F.linear(y, w_v, b_v).view(n, length, h, -1)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    x = x + attn.out_proj(out.transpose(1, 2).reshape(n, length, d))
    return x + block.mlp(block.ln_2(x)), q, k


class EVL(nn.Module):
    def __init__(
        self, backbone: str, num_classes: int, num_frames: int = 8, decoder_layers: int | None = None, device="cpu"
    ) -> None:
        super().__init__()
        self.visual = frozen(build_visual(backbone, device)).half()
        self.visual.eval()
        dim, layers = width(self.visual), self.visual.transformer.layers
        self.num_frames = num_frames
        self.decoder_layers = decoder_layers or layers
        heads = self.visual.transformer.resblocks[0].attn.num_heads
        with torch.device(device):
            self.decoder = nn.ModuleList(DecoderLayer(dim, heads) for _ in range(self.decoder_layers))
            self.temporal_conv = nn.ModuleList(
                nn.Conv1d(dim, dim, 3, padding=1, groups=dim) for _ in range(self.decoder_layers)
            )
            self.temporal_pos = nn.ParameterList(
                nn.Parameter(torch.zeros(num_frames, dim)) for _ in range(self.decoder_layers)
            )
            self.cross_attention = nn.ModuleList(
                TemporalCrossAttention(grid(self.visual), dim) for _ in range(self.decoder_layers)
            )
            self.cls_token = nn.Parameter(torch.zeros(dim))
            self.proj = nn.Sequential(nn.LayerNorm(dim), nn.Dropout(0.5), nn.Linear(dim, num_classes))

    def train(self, mode: bool = True) -> EVL:
        super().train(mode)
        self.visual.eval()
        return self

    def forward(self, video: Tensor) -> Tensor:
        b, t = video.shape[:2]
        with torch.no_grad():
            x = embed(self.visual, video)
            feats = []
            for block in self.visual.transformer.resblocks:
                x, q, k = _frozen_block(block, x)
                feats.append((x, q, k))
        feats = [[f.float().view(b, t, *f.shape[1:]) for f in layer] for layer in feats[-self.decoder_layers :]]
        query = self.cls_token.view(1, 1, -1).expand(b, 1, -1)
        for i, (out, q, k) in enumerate(feats):
            n_tok, c = out.shape[2], out.shape[3]
            conv = self.temporal_conv[i](out.permute(0, 2, 3, 1).contiguous().flatten(0, 1))
            frame = out + conv.view(b, n_tok, c, t).permute(0, 3, 1, 2)
            frame = frame + self.temporal_pos[i].view(1, t, 1, c)
            frame = frame + self.cross_attention[i](q, k)
            query = self.decoder[i](query, frame.flatten(1, 2))
        return self.proj(query[:, 0])
