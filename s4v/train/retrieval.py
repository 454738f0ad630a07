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


@torch.no_grad()
def evaluate_retrieval(
    model: VideoTextRetrieval,
    batches: Iterable[dict[str, Any]],
    tokens: CaptionTokens,
    dtype: torch.dtype,
    device: torch.device,
    block: int = 256,
) -> dict[str, Any]:
    """Collective: each rank encodes its videos, every rank gets all of them, rank 0's metrics are returned.

    Views (crops x clips) are averaged per frame embedding (the matcher normalises). The similarity
    matrix is computed block by block.
    """
    was_training = model.training
    model.eval()
    idx, frames = [], []
    for batch in batches:
        video = batch["video"]
        views = video.shape[1] if video.dim() == 6 else 1
        flat = video.flatten(0, 1) if views > 1 else video
        f = model.encode_video(flat.to(device, dtype)).float()
        frames.append(f.view(video.shape[0], views, *f.shape[1:]).mean(1))
        idx.append(batch["index"].cpu())
    parts = [p for p in all_gather_objects((idx, [f.cpu() for f in frames])) if p[0]]
    order = torch.cat([i for p in parts for i in p[0]])
    video_emb = torch.cat([f for p in parts for f in p[1]])[order.argsort()]
    text_tokens, owner = tokens.all()
    feats, mask, eot = [], [], []
    for chunk in text_tokens.split(block):
        t, m, e = model.encode_text(chunk.to(device))
        feats.append(t.float())
        mask.append(m)
        eot.append(e)
    video_emb = video_emb.to(device)
    sim = blockwise_similarity(
        model.similarity, torch.cat(feats), torch.cat(mask), torch.cat(eot), video_emb, block
    ).cpu()
    model.train(was_training)
    metrics = retrieval_metrics(sim, owner)
    return metrics | {"num_videos": int(video_emb.shape[0]), "num_captions": int(len(owner))}


def summary(metrics: dict[str, Any]) -> str:
    return (
        f"t2v R@1 {metrics['t2v_R@1']:.1f} R@5 {metrics['t2v_R@5']:.1f} R@10 {metrics['t2v_R@10']:.1f} "
        f"MdR {metrics['t2v_MdR']:.1f} | v2t R@1 {metrics['v2t_R@1']:.1f} R@5 {metrics['v2t_R@5']:.1f} "
        f"({metrics['num_captions']} captions, {metrics['num_videos']} videos)"
    )
