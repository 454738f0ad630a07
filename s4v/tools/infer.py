"""Use a trained checkpoint in a plain process (no DeepSpeed, no process group): `s4v predict`, and what
`launch/eval.py`, `s4v embed` and `s4v search` share: loading a checkpoint and turning files into views.

A video goes through the validation loader's own functions (`prepare` -> `decode_frames` -> `finish`: the
frame indices, resize and crops of `launch/eval.py --views`), so any file PyAV reads works, whatever its
container, codec or resolution, and a prediction is the one evaluation makes: class probabilities from
`s4v.train.evaluate.predict`, softmax averaged over the views.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from s4v.config import Config
from s4v.core.errors import UserError
from s4v.core.progress import progress, write
from s4v.data.config import DataConfig, parse_views
from s4v.data.decode import BadVideo, decode_frames
from s4v.data.prepare import finish, prepare
from s4v.data.records import VideoRecord
from s4v.train.evaluate import predict
from s4v.train.trained import DTYPES, default_dtype, load_trained


def read_views(path: str, data: DataConfig) -> torch.Tensor:
    """(V, T, 3, S, S) views of one video (V = data.test_clips x data.test_crops), built by the validation
    loader's functions; BadVideo when the file cannot be used."""
    p = prepare(0, VideoRecord(path, 0), data, train=False, seed=0, epoch=0)  # test sampling draws nothing
    return finish(p, torch.from_numpy(decode_frames(path, p.frames, p.data, p.video)), data, train=False)


def iter_views(
    paths: Sequence[str], data: DataConfig, failed: list[tuple[str, str]]
) -> Iterator[tuple[str, torch.Tensor]]:
    """(path, views) of every usable video, with a progress bar on stderr for several (on a terminal).

    A video that cannot be used gets one `error: <path>: <reason>` line on stderr and an entry in `failed`,
    and the others go on.
    """
    with progress(len(paths), "videos", unit="video", enabled=None if len(paths) >= 2 else False) as bar:
        for path in paths:
            try:
                views = read_views(path, data)
            except Exception as e:  # as in the loader: whatever fails on one video is that video's failure
                reason = e.reason if isinstance(e, BadVideo) else f"corrupt ({e!r})"
                failed.append((path, reason))
                bar.write(f"error: {path}: {reason}", file=sys.stderr)
                continue
            finally:
                bar.update()
            yield path, views


def batched(items: Iterable[tuple[str, torch.Tensor]], size: int) -> Iterator[tuple[list[str], torch.Tensor]]:
    """(paths, (B, V, T, 3, S, S) views) of up to `size` videos at a time."""
    paths: list[str] = []
    views: list[torch.Tensor] = []
    for path, v in items:
        paths.append(path)
        views.append(v)
        if len(paths) == size:
            yield paths, torch.stack(views)
            paths, views = [], []
    if paths:
        yield paths, torch.stack(views)


def class_probabilities(model: nn.Module, video: torch.Tensor, device: torch.device, dtype: torch.dtype) -> np.ndarray:
    """(B, classes) probabilities of a (B, V, T, 3, S, S) batch, computed by evaluation's `predict`."""
    n = video.shape[0]
    batch = {
        # The loader hands a single view in the training layout (B, T, 3, S, S), which `predict` expects.
        "video": video[:, 0] if video.shape[1] == 1 else video,
        "label": torch.zeros(n, dtype=torch.long),
        "index": torch.arange(n),
    }
    return predict(lambda v: model(v.to(device)), [batch], dtype)[2]


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name!r}: CUDA is not available on this machine")
    return device


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Options every command that runs a checkpoint takes."""
    p.add_argument("--checkpoint", required=True, help="a run's final/ dir or a checkpoints/step_* dir")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="compute dtype (default fp32 on CPU, fp16 on GPU)"
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="videos per forward pass (default: the run's data.batch_size)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run-config override, e.g. model.checkpoint=/weights/ViT-B-16.pt where the tower's weights moved",
    )


@dataclass
class Loaded:
    """A checkpoint ready to run, with how the command runs it."""

    model: nn.Module
    cfg: Config
    meta: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    batch_size: int


def load_from_args(args: argparse.Namespace, task: str, views: str) -> Loaded:
    """The checkpoint of `add_model_arguments`' options, its config set to `views` (CROPSxCLIPS)."""
    crops, clips = parse_views(views)
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    device = resolve_device(args.device)
    dtype = DTYPES[args.dtype or default_dtype(device)]
    overrides = [*args.set, f"data.test_crops={crops}", f"data.test_clips={clips}"]
    model, cfg, meta = load_trained(args.checkpoint, device, dtype, overrides, task)
    return Loaded(model, cfg, meta, device, dtype, args.batch_size or cfg.data.batch_size)


def top_classes(probs: np.ndarray, classes: list[str], k: int) -> list[dict[str, Any]]:
    order = np.argsort(-probs, kind="stable")[:k]  # ties in class order, as evaluation's ranking
    return [{"class": classes[i], "index": int(i), "prob": float(probs[i])} for i in order]


def format_prediction(path: str, top: list[dict[str, Any]]) -> str:
    width = max(len(t["class"]) for t in top)
    rows = [f"  {r:>3}  {t['class']:<{width}}  {100 * t['prob']:6.2f} %" for r, t in enumerate(top, 1)]
    return "\n".join([path, *rows])


def predict_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="s4v predict",
        description="Top-k classes of videos with a trained recognition checkpoint, views as launch/eval.py. "
        "Exit code 0: every video predicted; 1: some could not be read (one `error:` line each); 2: usage error.",
    )
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (any container / codec PyAV reads)")
    add_model_arguments(p)
    p.add_argument("--views", default="1x1", help="CROPSxCLIPS, e.g. 3x2 (crops: 1 or 3); softmax averaged over views")
    p.add_argument("--top", type=int, default=5, help="classes shown per video (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    args = p.parse_args(argv)
    if args.top < 1:
        raise UserError(f"--top {args.top}: must be at least 1")
    run = load_from_args(args, "recognition", args.views)
    classes = run.meta["classes"]
    failed: list[tuple[str, str]] = []
    videos = []
    for paths, video in batched(iter_views(args.videos, run.cfg.data, failed), run.batch_size):
        for path, probs in zip(paths, class_probabilities(run.model, video, run.device, run.dtype), strict=True):
            videos.append({"path": path, "top": top_classes(probs, classes, args.top)})
            if not args.json:
                write(format_prediction(path, videos[-1]["top"]))  # printed between redraws of the bar
    if args.json:
        failures = [{"path": path, "error": reason} for path, reason in failed]
        doc = {"checkpoint": args.checkpoint, "views": args.views, "videos": videos, "failed": failures}
        print(json.dumps(doc, indent=2))
    return 1 if failed else 0
