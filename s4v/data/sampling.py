"""Which frame indices a clip reads. Pure functions of (video length, rng), shared by every backend.

segment (TSN; SSv1/SSv2): the video is cut into `num_frames` equal segments of length L = n / T.
  train: frame i = floor(L * (i + u_i)), u_i ~ U[0, 1) per segment;
  test clip k of K: frame i = floor(L * (i + (k + 0.5) / K))  (K = 1: each segment's middle frame).
dense (Kinetics): `num_frames` frames `stride` apart, span S = (T - 1) * stride + 1.
  train: start ~ U{0 .. n - S};  test clip k of K: start = round(k * (n - S) / (K - 1)) (K = 1: centred).
Indices past the end (videos shorter than the span) are clamped to the last frame.
"""

from __future__ import annotations

import numpy as np


def segment_indices(
    n: int, num_frames: int, rng: np.random.Generator | None = None, clip: int = 0, num_clips: int = 1
) -> np.ndarray:
    """TSN segment sampling; `rng=None` gives the deterministic test-time clip `clip` of `num_clips`."""
    seg = n / num_frames
    if rng is None:
        offsets = np.full(num_frames, (clip + 0.5) / num_clips)
    else:
        offsets = rng.random(num_frames)
    idx = np.floor(seg * (np.arange(num_frames) + offsets)).astype(np.int64)
    return np.minimum(idx, n - 1)


def dense_indices(
    n: int,
    num_frames: int,
    stride: int,
    rng: np.random.Generator | None = None,
    clip: int = 0,
    num_clips: int = 1,
) -> np.ndarray:
    """Fixed-stride sampling; `rng=None` gives the evenly spread test-time clip `clip` of `num_clips`."""
    span = (num_frames - 1) * stride + 1
    room = max(n - span, 0)
    if rng is not None:
        start = int(rng.integers(room + 1))
    elif num_clips == 1:
        start = room // 2
    else:
        start = int(round(clip * room / (num_clips - 1)))
    return np.minimum(start + stride * np.arange(num_frames), n - 1).astype(np.int64)


def clip_indices(
    n: int,
    num_frames: int,
    sampling: str,
    stride: int = 8,
    rng: np.random.Generator | None = None,
    clip: int = 0,
    num_clips: int = 1,
) -> np.ndarray:
    if n <= 0:
        raise ValueError("video has no frames")
    if sampling == "segment":
        return segment_indices(n, num_frames, rng, clip, num_clips)
    if sampling == "dense":
        return dense_indices(n, num_frames, stride, rng, clip, num_clips)
    raise ValueError(f"unknown sampling {sampling!r}")
