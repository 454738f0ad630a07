"""One video's work, the same for every backend: `prepare` reads and indexes it and draws every random choice
of its clips from the generator of (seed, epoch, video index); `finish` is the PyTorch path from decoded frames
to clips (the PyAV workers run it; the DALI graph in `s4v.data.dali_pipeline` makes the same clips itself)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from s4v.data.config import DataConfig
from s4v.data.decode import BadVideo, VideoIndex, index_folder, read_bytes
from s4v.data.records import VideoRecord
from s4v.data.sampling import clip_indices
from s4v.data.transforms import AugParams, draw_params, test_views, train_transform
from s4v.data.video_index import index_of


@dataclass
class Prepared:
    """A video ready to decode: bytes (None for frame folders), the frames to read and, for training, every
    random choice of its clips."""

    index: int
    record: VideoRecord
    data: bytes | None
    frames: np.ndarray  # all clips' indices, concatenated
    video: VideoIndex  # frame count and size; a file's keyframes, which decoding seeks with
    params: list[AugParams] = field(default_factory=list)  # training: one per repeated clip


def prepare(index: int, rec: VideoRecord, cfg: DataConfig, train: bool, seed: int, epoch: int) -> Prepared:
    """Read + index + draw: frame indices, then the R clips' spatial augmentations; raises BadVideo.

    The R training clips are Table 12's repeated sampling as the reference's `num_sample` makes it: one
    decode and one temporal draw per video, then R spatial draws in turn from the sample's generator, so clip
    0 is the clip R = 1 gives and every clip stays a function of (seed, epoch, video index).
    """
    data = None
    if Path(rec.path).is_dir():
        video = index_folder(rec.path)
    else:
        data = read_bytes(rec.path)
        video = index_of(rec.path, data, cfg.video_index)
    rng = np.random.default_rng([seed, epoch, index])
    if not train:
        clips = [
            clip_indices(video.frames, cfg.num_frames, cfg.sampling, cfg.dense_stride, None, k, cfg.test_clips)
            for k in range(cfg.test_clips)
        ]
        return Prepared(index, rec, data, np.concatenate(clips), video)
    frames = clip_indices(video.frames, cfg.num_frames, cfg.sampling, cfg.dense_stride, rng)
    params = [draw_params(rng, cfg, *video.size) for _ in range(cfg.num_repeats)]
    return Prepared(index, rec, data, frames, video, params)


def finish(p: Prepared, decoded: torch.Tensor, cfg: DataConfig, train: bool) -> torch.Tensor:
    """The PyTorch path: decoded uint8 (n, H, W, 3) -> train clips (R, T, 3, S, S), R = `num_repeats`, or
    test views (V, T, 3, S, S), V = clips x crops."""
    if tuple(decoded.shape[1:3]) != p.video.size:  # the crop boxes were drawn for the declared size
        raise BadVideo(p.record.path, f"frames of {tuple(decoded.shape[1:3])} pixels, stream declares {p.video.size}")
    if train:
        return torch.stack([train_transform(decoded, a, cfg) for a in p.params])
    clips = decoded.reshape(cfg.test_clips, cfg.num_frames, *decoded.shape[1:])
    return torch.cat([test_views(c, cfg) for c in clips])
