"""What differs between action recognition and text-video retrieval in the training loop.

The trainer owns data order, DeepSpeed, checkpoints and tracking; a task supplies the loss of a batch,
the evaluation and how its results are reported. Both tasks share the video loader and follow one
protocol, `Task`, so the trainer and `launch/eval.py` call them the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from s4v.config import Config, MemberSpec
from s4v.core.errors import UserError
from s4v.data.loader import VideoLoader
from s4v.models.architectures import PRESETS
from s4v.models.retrieval import MAX_LOGIT_SCALE, symmetric_info_nce
from s4v.train import evaluate as recognition
from s4v.train import retrieval
from s4v.train.optimizer import clamp_parameter

Batch = dict[str, Any]  # a loader batch: "video", "label", "index" tensors
Metrics = dict[str, Any]


class Task(Protocol):
    """The task-specific part of training and evaluation.

    `model` in `loss` is what the trainer steps (the DeepSpeed engine); in `evaluate` it is the full
    model (frozen tower included), already in the compute dtype. The task holds that dtype and the device.
    """

    def loss(self, model: Callable[..., torch.Tensor], batch: Batch, epoch: int) -> torch.Tensor:
        """Training losses (K,) of one micro-batch, one per member (K = 1 without a sweep); "video" is
        already on the device in the compute dtype."""
        ...

    def evaluate(self, model: nn.Module, loader: VideoLoader) -> list[Metrics]:
        """Collective: every rank evaluates its shard of `loader`; rank 0's results (one per member, from
        one frozen pass) hold all of them."""
        ...

    def summary(self, metrics: Metrics) -> str: ...

    def tracked(self, metrics: Metrics) -> dict[str, float]: ...

    def headline(self, metrics: Metrics | None) -> dict[str, Any]: ...

    def write_report(self, metrics: Metrics, out_dir: Path, name: str) -> tuple[Path, ...]: ...

    def after_step(self, model: nn.Module) -> None:
        """Constraints the recipe puts on parameters once an optimizer step is done (`model`: the full model)."""
        ...


def _views(loader: VideoLoader) -> str:
    return f"{loader.cfg.test_crops}x{loader.cfg.test_clips}"


class RecognitionTask:
    """Label-smoothed cross-entropy; multi-view top-1/top-5, per-class accuracy, confusion matrix."""

    def __init__(
        self, cfg: Config, dtype: torch.dtype, device: torch.device, members: Sequence[MemberSpec] = ()
    ) -> None:
        # Each member's own smoothing (a sweep may vary it); without members, `cfg` is the one.
        self.label_smoothing = [m.cfg.optim.label_smoothing for m in members] or [cfg.optim.label_smoothing]
        self.dtype, self.device = dtype, device

    def loss(self, model: Callable[..., torch.Tensor], batch: Batch, epoch: int) -> torch.Tensor:
        logits = model(batch["video"])
        logits = logits if logits.dim() == 3 else logits[None]  # (K, B, classes): K members, or the one
        label = batch["label"].to(logits.device)
        return torch.stack(
            [
                F.cross_entropy(member.float(), label, label_smoothing=s)
                for member, s in zip(logits, self.label_smoothing, strict=True)
            ]
        )

    def evaluate(self, model: nn.Module, loader: VideoLoader) -> list[Metrics]:
        labels, probs = self.probabilities(model, loader)
        return [self.metrics(labels, p, loader) for p in probs]

    def probabilities(self, model: nn.Module, loader: VideoLoader) -> tuple[np.ndarray, np.ndarray]:
        """Collective: (labels, probabilities (K, videos, classes)) of the model's K members on `loader`, gathered
        over the ranks in dataset order, from one frozen pass (views averaged)."""
        was_training = model.training
        model.eval()
        idx, labels, probs = recognition.predict(lambda v: model(v.to(self.device)), loader, self.dtype)
        model.train(was_training)
        labels, probs = recognition.gather_predictions(idx, labels, probs)
        return labels, probs if probs.ndim == 3 else probs[None]  # one member's model gives (videos, classes)

    def metrics(self, labels: np.ndarray, probs: np.ndarray, loader: VideoLoader) -> Metrics:
        """The metrics of one member's probabilities (or of an average of several members')."""
        return recognition.classification_metrics(labels, probs, list(loader.classes)) | {"views": _views(loader)}

    def summary(self, metrics: Metrics) -> str:
        return recognition.summary(metrics)

    def tracked(self, metrics: Metrics) -> dict[str, float]:
        return {k: metrics[k] for k in ("top1", "top5", "mean_class_accuracy")}

    def headline(self, metrics: Metrics | None) -> dict[str, Any]:
        return {k: metrics[k] if metrics else None for k in ("top1", "top5", "chance")}

    def write_report(self, metrics: Metrics, out_dir: Path, name: str) -> tuple[Path, ...]:
        return recognition.write_report(metrics, out_dir, name)

    def after_step(self, model: nn.Module) -> None:
        return None


class RetrievalTask:
    """Symmetric InfoNCE on one sampled caption per video; R@K / MdR / MnR in both directions.

    Captions come from the loaders; training needs the training loader's (None: evaluation only).
    """

    def __init__(
        self, cfg: Config, dtype: torch.dtype, device: torch.device, train_loader: VideoLoader | None = None
    ) -> None:
        self.dtype, self.device = dtype, device
        # The tokenizer belongs to the preset's tower (preset names are not tower names in general).
        self.tokenizer = PRESETS[cfg.model.preset].tower.tokenizer
        self.length, self.seed = cfg.model.text_length, cfg.train.seed
        self.train_tokens = None if train_loader is None else self._tokens(train_loader)
        self.val_tokens: retrieval.CaptionTokens | None = None

    def _tokens(self, loader: VideoLoader) -> retrieval.CaptionTokens:
        if loader.captions is None:
            raise UserError(f"data.fmt={loader.cfg.fmt!r} has no captions; retrieval needs msrvtt, msvd or vatex")
        return retrieval.CaptionTokens(loader.captions, self.tokenizer, self.length, self.seed)

    def loss(self, model: Callable[..., torch.Tensor], batch: Batch, epoch: int) -> torch.Tensor:
        if self.train_tokens is None:
            raise RuntimeError("RetrievalTask built without a training loader cannot compute a training loss")
        video = batch["video"]
        tokens = self.train_tokens.sample(batch["index"], epoch).to(video.device)
        return symmetric_info_nce(model(video, tokens).float())[None]  # one member (no retrieval sweeps)

    def evaluate(self, model: nn.Module, loader: VideoLoader) -> list[Metrics]:
        if self.val_tokens is None or self.val_tokens.captions is not loader.captions:
            self.val_tokens = self._tokens(loader)
        metrics = retrieval.evaluate_retrieval(model, loader, self.val_tokens, self.dtype, self.device)
        return [metrics | {"views": _views(loader)}]

    def summary(self, metrics: Metrics) -> str:
        return retrieval.summary(metrics)

    def tracked(self, metrics: Metrics) -> dict[str, float]:
        return {k.replace("@", "_at_"): v for k, v in metrics.items() if k.startswith(("t2v_", "v2t_"))}

    def headline(self, metrics: Metrics | None) -> dict[str, Any]:
        return {k: metrics[k] if metrics else None for k in ("t2v_R@1", "t2v_R@5", "v2t_R@1")}

    def write_report(self, metrics: Metrics, out_dir: Path, name: str) -> tuple[Path, ...]:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(metrics, indent=2))
        return (path,)

    def after_step(self, model: nn.Module) -> None:
        # Retrieval/main_task_retrieval.py clamps the logit scale to <= ln 100 after every optimizer step.
        clamp_parameter(model.temperature.logit_scale, MAX_LOGIT_SCALE)


def make_task(
    cfg: Config,
    dtype: torch.dtype,
    device: torch.device,
    train_loader: VideoLoader | None = None,
    members: Sequence[MemberSpec] = (),
) -> Task:
    """The task of `cfg.model.task`, computing in `dtype` on `device`; `train_loader` and the run's resolved
    `members` for training (evaluation needs neither)."""
    if cfg.model.task == "recognition":
        return RecognitionTask(cfg, dtype, device, members)
    if cfg.model.task == "retrieval":
        return RetrievalTask(cfg, dtype, device, train_loader)
    raise UserError(f"unknown model.task {cfg.model.task!r}; choose one of ['recognition', 'retrieval']")
