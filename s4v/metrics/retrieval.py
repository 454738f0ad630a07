"""Retrieval metrics in both directions: R@1/5/10, median rank, mean rank.

Ranks are pessimistic on ties: a ground-truth item ranks behind every other item with an equal
score, so a model that scores everything the same gets the worst rank, never R@1 = 100 %.
Several captions per video are allowed: text-to-video ranks each caption's video; video-to-text
takes, per video, the best-ranked of its captions (the multi-caption protocol of MSVD / VATEX).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

RECALL_AT = (1, 5, 10)


def ground_truth_ranks(scores: Tensor, truth: Tensor) -> Tensor:
    """1-based rank of each row's best ground-truth column; `truth` is a (rows, cols) bool mask, >= 1 per row.

    rank = number of columns scoring >= the best true score (itself included): ties count against it.
    """
    if not bool(truth.any(dim=1).all()):
        raise ValueError("every query needs at least one ground-truth item")
    best = scores.masked_fill(~truth, float("-inf")).amax(dim=1, keepdim=True)
    return (scores >= best).sum(dim=1)


def rank_metrics(ranks: Tensor) -> dict[str, float]:
    r = ranks.double().cpu()
    out = {f"R@{k}": 100.0 * float((r <= k).double().mean()) for k in RECALL_AT}
    return out | {"MdR": float(np.median(r.numpy())), "MnR": float(r.mean())}


def retrieval_metrics(sim: Tensor, caption_video: Tensor) -> dict[str, float]:
    """`sim` is (captions, videos); `caption_video[i]` is the video index caption i describes."""
    truth = torch.zeros(sim.shape, dtype=torch.bool, device=sim.device)
    truth[torch.arange(sim.shape[0], device=sim.device), caption_video] = True
    t2v = rank_metrics(ground_truth_ranks(sim, truth))
    v2t = rank_metrics(ground_truth_ranks(sim.t(), truth.t()))
    return {f"t2v_{k}": v for k, v in t2v.items()} | {f"v2t_{k}": v for k, v in v2t.items()}
