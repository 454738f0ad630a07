"""PyAV decoding (every codec, on CPU), probing, and the public `read_clip`.

Probing counts the video packets by demuxing (no decoding) and compares them with what the container
declares, so a truncated file is caught before any frame is decoded; decoding errors name the file.
Frame folders (SSv1's JPEG frames) are read with PIL.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

from s4v.data.sampling import clip_indices

FRAME_EXTS = (".jpg", ".jpeg", ".png")
# `VideoFrame.to_ndarray(format=...)` builds a new swscale context for every frame, which costs ~6x the
# decoding itself on small videos: keep one per process (a context created before a DataLoader fork
# must not be reused in the child) and without slice threads, which do not survive a fork either.
_REFORMATTERS: dict[int, VideoReformatter] = {}


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    reformatter = _REFORMATTERS.setdefault(os.getpid(), VideoReformatter())
    return reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()


class BadVideo(Exception):
    """A video that cannot be used: missing, empty, truncated or corrupt."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _frame_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_EXTS)


def read_bytes(path: str) -> bytes:
    """File contents, or BadVideo for a missing / empty file."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise BadVideo(path, "missing file") from None
    except OSError as e:
        raise BadVideo(path, f"unreadable ({e.strerror})") from None
    if not data:
        raise BadVideo(path, "empty file")
    return data


def declared_frames(stream: av.video.stream.VideoStream, container: av.container.InputContainer) -> int:
    """Frame count the container promises, minus one frame of slack when derived from a duration."""
    if stream.frames:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    if container.duration and rate:  # webm stores only the duration
        return int(round(container.duration / av.time_base * float(rate))) - 1
    return 0


def probe(path: str, data: bytes | None = None) -> int:
    """Number of frames of a video file (or frame folder); BadVideo if it cannot be used."""
    if Path(path).is_dir():
        n = len(_frame_files(Path(path)))
        if n == 0:
            raise BadVideo(path, "frame folder without images")
        return n
    data = read_bytes(path) if data is None else data
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise BadVideo(path, "no video stream")
            stream = container.streams.video[0]
            declared = declared_frames(stream, container)
            count = sum(1 for pkt in container.demux(stream) if pkt.size)
    except av.FFmpegError as e:
        raise BadVideo(path, f"corrupt ({e.__class__.__name__}: {e})") from None
    if count == 0:
        raise BadVideo(path, "corrupt (no video packets)")
    if count < declared:
        raise BadVideo(path, f"truncated ({count} of {declared} frames present)")
    return count


def decode_frames(path: str, indices: np.ndarray, data: bytes | None = None) -> np.ndarray:
    """uint8 (len(indices), H, W, 3) RGB frames at `indices` (any order, repeats allowed)."""
    if Path(path).is_dir():
        files = _frame_files(Path(path))
        return np.stack([np.asarray(Image.open(files[i]).convert("RGB")) for i in indices])
    data = read_bytes(path) if data is None else data
    wanted = set(int(i) for i in indices)
    last = max(wanted)
    got: dict[int, np.ndarray] = {}
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "NONE"  # loaders parallelise over videos; codec threads only add overhead
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    got[i] = _to_rgb(frame)
                if i >= last:
                    break
    except av.FFmpegError as e:
        raise BadVideo(path, f"corrupt ({e.__class__.__name__}: {e})") from None
    if len(got) < len(wanted):
        raise BadVideo(path, f"truncated (frame {last} requested, {len(got)} of the wanted frames decoded)")
    return np.stack([got[int(i)] for i in indices])


def read_clip(
    path: str,
    num_frames: int = 8,
    sampling: str = "segment",
    backend: str = "pyav",
    clip: int = 0,
    num_clips: int = 1,
    stride: int = 8,
) -> np.ndarray:
    """Test-time clip `clip` of `num_clips` as uint8 (T, H, W, 3), indices per `s4v.data.sampling`.

    backend "pyav" decodes with FFmpeg through PyAV; "dali" with DALI's CPU decoder (VP8/VP9/MJPEG).
    """
    indices = clip_indices(probe(path), num_frames, sampling, stride, None, clip, num_clips)
    if backend == "pyav":
        return decode_frames(path, indices)
    if backend == "dali":
        from s4v.data.dali import decode_clips

        return decode_clips([read_bytes(path)], [indices], device="cpu")[0]
    raise ValueError(f"unknown backend {backend!r}")
