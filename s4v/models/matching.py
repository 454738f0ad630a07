"""Text-video similarity: token-wise fine-grained matching (DRL / FILIP) or mean-pooled global matching.

Both take L2-normalised frame embeddings (Nv, T, E) and text token embeddings (Nt, L, E) with a
validity mask, and return an (Nt, Nv) similarity matrix.
"""

from __future__ import annotations

from typing import get_args

import torch
from torch import Tensor

from s4v.choices import Matching

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


def global_similarity(text_eot: Tensor, frames: Tensor) -> Tensor:
    """Cosine between the EOT text embedding and the mean of the frame embeddings (CLIP4Clip meanP)."""
    video = torch.nn.functional.normalize(frames.mean(1), dim=-1)
    return text_eot @ video.t()


def similarity(matching: str, text: Tensor, mask: Tensor, eot: Tensor, frames: Tensor) -> Tensor:
    if matching == "token":
        return token_wise_similarity(text, mask, frames)
    if matching == "global":
        return global_similarity(text[torch.arange(text.shape[0]), eot], frames)
    raise ValueError(f"unknown matching {matching!r}; choose one of {MATCHING}")


def blockwise_similarity(
    matching: str, text: Tensor, mask: Tensor, eot: Tensor, frames: Tensor, block: int = 256
) -> Tensor:
    """The full (Nt, Nv) matrix, computed block by block so token-wise matching of large test sets fits in memory."""
    rows = []
    for i in range(0, text.shape[0], block):
        cols = [
            similarity(matching, text[i : i + block], mask[i : i + block], eot[i : i + block], frames[j : j + block])
            for j in range(0, frames.shape[0], block)
        ]
        rows.append(torch.cat(cols, dim=1))
    return torch.cat(rows, dim=0)
