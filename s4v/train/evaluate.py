"""Multi-view evaluation: class probabilities averaged over views (crops x clips), top-1/top-5,
per-class accuracy and a confusion matrix, gathered over all ranks."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s4v.train.distributed import all_gather_objects


@torch.no_grad()
def predict(
    forward: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[dict], dtype: torch.dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices, labels, probabilities) of this rank's share; views are folded into the batch and their
    softmax probabilities averaged (the usual multi-view protocol). Logits (K, B, C) of a sweep's K members
    give probabilities (K, N, C): the videos are on the second axis."""
    idx, labels, probs = [], [], []
    for batch in batches:
        video = batch["video"]
        views = video.shape[1] if video.dim() == 6 else 1
        flat = video.flatten(0, 1) if views > 1 else video
        logits = forward(flat.to(dtype)).float()
        p = logits.softmax(-1).unflatten(-2, (video.shape[0], views)).mean(-2)
        probs.append(p.cpu().numpy())
        labels.append(batch["label"].cpu().numpy())
        idx.append(batch["index"].cpu().numpy())
    if not probs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    return np.concatenate(idx), np.concatenate(labels), np.concatenate(probs, axis=-2)


def gather_predictions(idx: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All ranks' (labels, probabilities), ordered by dataset index (probabilities: videos on axis -2)."""
    parts = [p for p in all_gather_objects((idx, labels, probs)) if len(p[0])]
    idx = np.concatenate([p[0] for p in parts])
    order = np.argsort(idx, kind="stable")
    probs = np.concatenate([p[2] for p in parts], axis=-2)
    return np.concatenate([p[1] for p in parts])[order], probs[..., order, :]


def classification_metrics(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    k = probs.shape[1]
    ranked = np.argsort(-probs, axis=1, kind="stable")
    top1 = ranked[:, 0] == labels
    top5 = (ranked[:, : min(5, k)] == labels[:, None]).any(1)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (labels, ranked[:, 0]), 1)
    support = confusion.sum(1)
    per_class = {classes[c]: (float(confusion[c, c] / support[c]) if support[c] else None) for c in range(k)}
    seen = [v for v in per_class.values() if v is not None]
    return {
        "num_videos": int(len(labels)),
        "top1": float(top1.mean()) if len(labels) else 0.0,
        "top5": float(top5.mean()) if len(labels) else 0.0,
        "mean_class_accuracy": float(np.mean(seen)) if seen else 0.0,
        "chance": 1.0 / k,
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion.tolist(),
        "classes": list(classes),
    }


def plot_confusion(metrics: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(metrics["confusion_matrix"], dtype=float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    k = len(cm)
    size = min(4 + 0.35 * k, 40)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 40:
        ax.set_xticks(range(k), metrics["classes"], rotation=90, fontsize=7)
        ax.set_yticks(range(k), metrics["classes"], fontsize=7)
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        int(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\ntop-1 {metrics['top1']:.1%}  top-5 {metrics['top5']:.1%}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(metrics: dict[str, Any], out_dir: Path, name: str) -> tuple[Path, Path]:
    """`<name>.json` (all metrics) and `<name>_confusion.png` in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js, png = out_dir / f"{name}.json", out_dir / f"{name}_confusion.png"
    js.write_text(json.dumps(metrics, indent=2))
    plot_confusion(metrics, png, name)
    return js, png


def summary(metrics: dict[str, Any]) -> str:
    return (
        f"top-1 {metrics['top1']:.2%}  top-5 {metrics['top5']:.2%}  mean-class {metrics['mean_class_accuracy']:.2%}"
        f"  (chance {metrics['chance']:.2%}, {metrics['num_videos']} videos, {metrics.get('views', '1x1')} views)"
    )
