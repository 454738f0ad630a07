"""Text-video retrieval pieces of the training task: caption sampling and tokenising, R@K evaluation.

Captions come from the loader (read once with the split's annotations) and are tokenised here with
open_clip's tokenizer of the preset's tower. Caption choice draws from `default_rng([seed, epoch, video])`,
so a resumed run sees the same pairs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import open_clip
import torch
from torch import nn

from s4v.data.captions import CaptionSplit
from s4v.metrics.retrieval import retrieval_metrics
from s4v.models.matching import blockwise_similarity
from s4v.models.retrieval import VideoTextRetrieval
from s4v.train.distributed import all_gather_objects


class CaptionTokens:
    """Tokenised captions of one split, and the deterministic per-step caption draw for training."""

    def __init__(self, captions: CaptionSplit, tokenizer: str, context_length: int, seed: int) -> None:
        self.captions, self.seed = captions, seed
        self.tokenizer = open_clip.get_tokenizer(tokenizer, context_length=context_length)

    def sample(self, videos: torch.Tensor, epoch: int) -> torch.Tensor:
        """One caption per video of the batch (videos: indices into the split)."""
        texts = []
        for v in videos.tolist():
            options = self.captions.captions[v]
            texts.append(options[np.random.default_rng([self.seed, epoch, v]).integers(len(options))])
        return self.tokenizer(texts)

    def all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every caption of the split (test protocol) and the video index of each."""
        texts, owner = self.captions.flat()
        return self.tokenizer(texts), torch.tensor(owner)


BLOCK = 256  # texts / videos per similarity block: token-wise matching of large test sets stays in memory


@torch.no_grad()
def frame_embeddings(model: nn.Module, video: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(B, T, E) float32 frame features of a (B, T, 3, S, S) or (B, V, T, 3, S, S) batch, averaged over the
    V views (the matcher normalises them)."""
    views = video.shape[1] if video.dim() == 6 else 1
    flat = video.flatten(0, 1) if video.dim() == 6 else video
    f = model.encode_video(flat.to(device, dtype)).float()
    return f.view(video.shape[0], views, *f.shape[1:]).mean(1)


@torch.no_grad()
def text_video_scores(
    model: nn.Module, tokens: torch.Tensor, frames: torch.Tensor, device: torch.device, block: int = BLOCK
) -> torch.Tensor:
    """(texts, videos) similarities of tokenised texts against frame embeddings (Nv, T, E), on the CPU."""
    feats, mask, eot = [], [], []
    for chunk in tokens.split(block):
        t, m, e = model.encode_text(chunk.to(device))
        feats.append(t.float())
        mask.append(m)
        eot.append(e)
    text = (torch.cat(feats), torch.cat(mask), torch.cat(eot))
    return blockwise_similarity(model.similarity, *text, frames.to(device), block).cpu()


@torch.no_grad()
def evaluate_retrieval(
    model: VideoTextRetrieval,
    batches: Iterable[dict[str, Any]],
    tokens: CaptionTokens,
    dtype: torch.dtype,
    device: torch.device,
    block: int = BLOCK,
) -> dict[str, Any]:
    """Collective: each rank encodes its videos, every rank gets all of them, rank 0's metrics are returned.

    Views (crops x clips) are averaged per frame embedding (the matcher normalises). The similarity
    matrix is computed block by block.
    """
    was_training = model.training
    model.eval()
    idx, frames = [], []
    for batch in batches:
        frames.append(frame_embeddings(model, batch["video"], device, dtype))
        idx.append(batch["index"].cpu())
    parts = [p for p in all_gather_objects((idx, [f.cpu() for f in frames])) if p[0]]
    order = torch.cat([i for p in parts for i in p[0]])
    video_emb = torch.cat([f for p in parts for f in p[1]])[order.argsort()]
    text_tokens, owner = tokens.all()
    sim = text_video_scores(model, text_tokens, video_emb, device, block)
    model.train(was_training)
    metrics = retrieval_metrics(sim, owner)
    return metrics | {"num_videos": int(video_emb.shape[0]), "num_captions": int(len(owner))}


def summary(metrics: dict[str, Any]) -> str:
    return (
        f"t2v R@1 {metrics['t2v_R@1']:.1f} R@5 {metrics['t2v_R@5']:.1f} R@10 {metrics['t2v_R@10']:.1f} "
        f"MdR {metrics['t2v_MdR']:.1f} | v2t R@1 {metrics['v2t_R@1']:.1f} R@5 {metrics['v2t_R@5']:.1f} "
        f"({metrics['num_captions']} captions, {metrics['num_videos']} videos)"
    )
