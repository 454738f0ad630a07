"""Text-video similarity: WTI (weighted token-wise, the reference's default), unweighted token-wise
(DRL / FILIP) or mean-pooled global matching.

`Matcher` takes raw (unnormalised) frame features (Nv, T, E) and text token features (Nt, L, E) with
a validity mask and returns an (Nt, Nv) similarity matrix. WTI's token weights are computed from the
raw features, as the reference's Retrieval/modules/modeling.py (`wti_interaction`) does, and the
features are L2-normalised for the similarities.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s4v.core.choices import Matching

MATCHING: tuple[Matching, ...] = get_args(Matching)


def token_wise_similarity(text: Tensor, mask: Tensor, frames: Tensor) -> Tensor:
    """DRL's token-wise interaction: mean over words of the best frame, and mean over frames of the best word."""
    sim = torch.einsum("ale,vte->avlt", text, frames)  # (Nt, Nv, L, T)
    m = mask[:, None, :].to(sim.dtype)  # (Nt, 1, L)
    words = sim.amax(dim=3)  # best frame per word
    t2v = (words * m).sum(-1) / m.sum(-1)
    neg = torch.finfo(sim.dtype).min
    v2t = sim.masked_fill(~mask[:, None, :, None], neg).amax(dim=2).mean(-1)  # best valid word per frame
    return 0.5 * (t2v + v2t)


def wti_similarity(text: Tensor, mask: Tensor, frames: Tensor, text_weight: Tensor, frame_weight: Tensor) -> Tensor:
    """Weighted token-wise interaction on normalised features; weights (Nt, L) and (Nv, T) sum to 1 per row.

    Padded words enter the similarities multiplied by 0, not masked to -inf (as the reference does), so
    a frame whose every valid word scores below 0 takes 0 as its best word.
    """
    sim = torch.einsum("ale,vte->avlt", text, frames) * mask[:, None, :, None].to(text.dtype)
    t2v = torch.einsum("avl,al->av", sim.amax(dim=3), text_weight)
    v2t = torch.einsum("avt,vt->av", sim.amax(dim=2), frame_weight)
    return 0.5 * (t2v + v2t)


def global_similarity(text_eot: Tensor, frames: Tensor) -> Tensor:
    """Cosine between the EOT text embedding and the mean of the frame embeddings (CLIP4Clip meanP)."""
    video = F.normalize(frames.mean(1), dim=-1)
    return text_eot @ video.t()


def _token_weights(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1))


class Matcher(nn.Module):
    """The similarity of a retrieval model; WTI owns the two small MLPs that weight words and frames."""

    def __init__(self, kind: Matching, dim: int) -> None:
        super().__init__()
        if kind not in MATCHING:
            raise ValueError(f"unknown matching {kind!r}; choose one of {MATCHING}")
        self.kind = kind
        self.text_weight = _token_weights(dim) if kind == "wti" else None
        self.frame_weight = _token_weights(dim) if kind == "wti" else None

    def forward(self, text: Tensor, mask: Tensor, eot: Tensor, frames: Tensor) -> Tensor:
        """Raw token features (Nt, L, E), mask (Nt, L), EOT index (Nt,), raw frames (Nv, T, E) -> (Nt, Nv)."""
        text_n, frames_n = F.normalize(text, dim=-1), F.normalize(frames, dim=-1)
        if self.kind == "global":
            return global_similarity(text_n[torch.arange(text.shape[0]), eot], frames_n)
        if self.kind == "token":
            return token_wise_similarity(text_n, mask, frames_n)
        w_dtype = self.text_weight[0].weight.dtype  # evaluation may hand fp32 features to a bf16 model
        words = self.text_weight(text.to(w_dtype)).squeeze(-1).masked_fill(~mask, float("-inf")).softmax(-1)
        frame_w = self.frame_weight(frames.to(w_dtype)).squeeze(-1).softmax(-1)  # every frame is valid
        return wti_similarity(text_n, mask, frames_n, words.to(text_n.dtype), frame_w.to(text_n.dtype))


SimilarityFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def blockwise_similarity(
    similarity: SimilarityFn, text: Tensor, mask: Tensor, eot: Tensor, frames: Tensor, block: int = 256
) -> Tensor:
    """The full (Nt, Nv) matrix, computed block by block so token-wise matching of large test sets fits in memory.

    Every row and column is scored on its own (WTI's weights come from one text or one video), so the
    blocks give the same matrix as one call.
    """
    rows = []
    for i in range(0, text.shape[0], block):
        t, m, e = text[i : i + block], mask[i : i + block], eot[i : i + block]
        rows.append(torch.cat([similarity(t, m, e, frames[j : j + block]) for j in range(0, len(frames), block)], 1))
    return torch.cat(rows, dim=0)
