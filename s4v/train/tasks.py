"""What differs between action recognition and text-video retrieval in the training loop.

The trainer owns data order, DeepSpeed, checkpoints and tracking; a task supplies the loss of a batch,
the evaluation and how its results are reported. Both tasks share the video loader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from s4v.config import Config
from s4v.models import RETRIEVAL_PRESETS
from s4v.train import evaluate as recognition
from s4v.train import retrieval


class RecognitionTask:
    """Label-smoothed cross-entropy; multi-view top-1/top-5, per-class accuracy, confusion matrix."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def loss(self, engine: Any, video: torch.Tensor, batch: dict, epoch: int) -> torch.Tensor:
        logits = engine(video)
        label = batch["label"].to(logits.device)
        return F.cross_entropy(logits.float(), label, label_smoothing=self.cfg.optim.label_smoothing)

    def evaluate(
        self, engine: Any, model: Any, batches: Any, loader: Any, dtype: torch.dtype, device: torch.device
    ) -> dict[str, Any]:
        """Collective: each rank predicts its shard, rank 0 receives all predictions."""
        engine.eval()
        idx, labels, probs = recognition.predict(lambda v: engine(v.to(device)), batches, dtype)
        engine.train()
        labels, probs = recognition.gather_predictions(idx, labels, probs)
        metrics = recognition.classification_metrics(labels, probs, list(loader.classes))
        metrics["views"] = f"{loader.cfg.test_crops}x{loader.cfg.test_clips}"
        return metrics

    @staticmethod
    def tracked(metrics: dict[str, Any]) -> dict[str, float]:
        return {k: metrics[k] for k in ("top1", "top5", "mean_class_accuracy")}

    @staticmethod
    def headline(metrics: dict[str, Any] | None) -> dict[str, Any]:
        return {k: metrics[k] if metrics else None for k in ("top1", "top5", "chance")}

    summary = staticmethod(recognition.summary)
    write_report = staticmethod(recognition.write_report)


class RetrievalTask:
    """Symmetric InfoNCE on one sampled caption per video; R@K / MdR / MnR in both directions."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        # The tokenizer belongs to the preset's tower (preset names are not backbone names in general).
        backbone = RETRIEVAL_PRESETS[cfg.model.preset].backbone
        seed, length = cfg.train.seed, cfg.model.text_length
        self.train_tokens = retrieval.CaptionTokens(retrieval.load_captions(cfg.data, "train"), backbone, length, seed)
        self.val_tokens = retrieval.CaptionTokens(retrieval.load_captions(cfg.data, "val"), backbone, length, seed)

    def loss(self, engine: Any, video: torch.Tensor, batch: dict, epoch: int) -> torch.Tensor:
        tokens = self.train_tokens.sample(batch["label"], epoch).to(video.device)
        return retrieval.retrieval_loss(engine, video, tokens)

    def evaluate(
        self, engine: Any, model: Any, batches: Any, loader: Any, dtype: torch.dtype, device: torch.device
    ) -> dict[str, Any]:
        metrics = retrieval.evaluate_retrieval(model, batches, self.val_tokens, dtype, device)
        return metrics | {"views": f"{loader.cfg.test_crops}x{loader.cfg.test_clips}"}

    @staticmethod
    def tracked(metrics: dict[str, Any]) -> dict[str, float]:
        return {k.replace("@", "_at_"): v for k, v in metrics.items() if k.startswith(("t2v_", "v2t_"))}

    @staticmethod
    def headline(metrics: dict[str, Any] | None) -> dict[str, Any]:
        return {k: metrics[k] if metrics else None for k in ("t2v_R@1", "t2v_R@5", "v2t_R@1")}

    @staticmethod
    def write_report(metrics: dict[str, Any], out_dir: Path, name: str) -> tuple[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(metrics, indent=2))
        return (path,)

    summary = staticmethod(retrieval.summary)


def make_task(cfg: Config) -> RecognitionTask | RetrievalTask:
    tasks = {"recognition": RecognitionTask, "retrieval": RetrievalTask}
    if cfg.model.task not in tasks:
        raise ValueError(f"unknown model.task {cfg.model.task!r}; choose one of {sorted(tasks)}")
    return tasks[cfg.model.task](cfg)
