"""PyAV decoding (every codec, on CPU), probing, and the public `read_clip`.

Probing counts the video packets by demuxing (no decoding) and compares them with what the container
declares, so a truncated file is caught before any frame is decoded; decoding errors name the file.
The same demux pass indexes the file (`VideoIndex`: each frame's timestamp and the keyframes), so decoding
can seek past whole groups of pictures to the keyframe before a wanted frame where the file has them between
the sampled frames, instead of decoding everything up to the last one; the frames are the same either way.
Frame folders (SSv1's JPEG frames) are read with PIL.
"""

from __future__ import annotations

import io
import os
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class VideoIndex:
    """A video file's frames as its demuxer lists them: `frames` packets, and when every packet has a distinct
    timestamp, `pts` (the frames' timestamps in presentation order, i.e. the decoder's output order) and
    `keyframes` (indices of the frames decoding can start from); `size` is the frames' (height, width) as the
    stream declares them, known before decoding so that crop boxes can be drawn up front."""

    frames: int
    pts: tuple[int, ...] = ()
    keyframes: tuple[int, ...] = ()
    size: tuple[int, int] = (0, 0)

    def keyframe_before(self, frame: int) -> int:
        return self.keyframes[bisect_right(self.keyframes, frame) - 1]

    def runs(self, wanted: list[int]) -> list[list[int]]:
        """Sorted `wanted` frames cut where a keyframe lies after one wanted frame and at or before the next:
        each run is decoded from the keyframe before its first frame (a seek), within a run frame by frame."""
        runs: list[list[int]] = []
        for frame in wanted:
            if runs and self.keyframe_before(frame) <= runs[-1][-1]:
                runs[-1].append(frame)
            else:
                runs.append([frame])
        return runs

    @property
    def seekable(self) -> bool:
        return bool(self.keyframes) and self.keyframes[0] == 0


def index_video(path: str, data: bytes) -> VideoIndex:
    """Demux (no decoding) a video file's bytes into its `VideoIndex`; BadVideo if it cannot be used."""
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise BadVideo(path, "no video stream")
            stream = container.streams.video[0]
            declared = declared_frames(stream, container)
            size = (stream.codec_context.height, stream.codec_context.width)
            packets = [(pkt.pts, pkt.is_keyframe) for pkt in container.demux(stream) if pkt.size]
    except av.FFmpegError as e:
        raise BadVideo(path, f"corrupt ({e.__class__.__name__}: {e})") from None
    if not packets:
        raise BadVideo(path, "corrupt (no video packets)")
    if len(packets) < declared:
        raise BadVideo(path, f"truncated ({len(packets)} of {declared} frames present)")
    return index_from_packets(packets, size)


def index_from_packets(packets: list[tuple[int | None, bool]], size: tuple[int, int]) -> VideoIndex:
    """The index of a stream's non-empty video packets, (pts, is_keyframe) in demux order; shared by `index_video`
    and `s4v data check`, which demuxes every file anyway."""
    stamps = [pts for pts, _ in packets]
    if None in stamps or len(set(stamps)) < len(stamps):  # no way to tell which frame a seek lands on
        return VideoIndex(len(packets), size=size)
    order = sorted(stamps)
    rank = {pts: i for i, pts in enumerate(order)}
    keyframes = tuple(sorted(rank[pts] for pts, key in packets if key))
    return VideoIndex(len(packets), tuple(order), keyframes, size)


def index_folder(path: str) -> VideoIndex:
    """A frame folder's frame count and frame size (from the first image's header); BadVideo without images."""
    files = _frame_files(Path(path))
    if not files:
        raise BadVideo(path, "frame folder without images")
    with Image.open(files[0]) as first:
        return VideoIndex(len(files), size=(first.height, first.width))


def probe(path: str, data: bytes | None = None) -> int:
    """Number of frames of a video file (or frame folder); BadVideo if it cannot be used."""
    if Path(path).is_dir():
        return index_folder(path).frames
    return index_video(path, read_bytes(path) if data is None else data).frames


def decode_frames(
    path: str, indices: np.ndarray, data: bytes | None = None, index: VideoIndex | None = None
) -> np.ndarray:
    """uint8 (len(indices), H, W, 3) RGB frames at `indices` (any order, repeats allowed). With the file's
    `index`, decoding seeks to the keyframe before a run of wanted frames where that skips a whole group."""
    if Path(path).is_dir():
        files = _frame_files(Path(path))
        return np.stack([np.asarray(Image.open(files[i]).convert("RGB")) for i in indices])
    data = read_bytes(path) if data is None else data
    wanted = sorted(set(int(i) for i in indices))
    seek = index is not None and index.seekable and index.keyframe_before(wanted[-1]) > 0
    got = _decode(path, data, wanted, index if seek else None)
    if seek and len(got) < len(wanted):  # a frame without the timestamp the demuxer listed: read it in order
        got = _decode(path, data, wanted, None)
    if len(got) < len(wanted):
        raise BadVideo(path, f"truncated (frame {wanted[-1]} requested, {len(got)} of the wanted frames decoded)")
    return np.stack([got[int(i)] for i in indices])


def _decode(path: str, data: bytes, wanted: list[int], index: VideoIndex | None) -> dict[int, np.ndarray]:
    """The `wanted` frames (sorted) decoded from the start, or run by run from seeks with the file's `index`."""
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "NONE"  # loaders parallelise over videos; codec threads only add overhead
            if index is None:
                return _decode_from_start(container, stream, wanted)
            return _decode_runs(container, stream, index.runs(wanted), index)
    except av.FFmpegError as e:
        raise BadVideo(path, f"corrupt ({e.__class__.__name__}: {e})") from None


def _decode_from_start(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, wanted: list[int]
) -> dict[int, np.ndarray]:
    """Every frame from the first to the last wanted one; a frame is known by its place in the output order."""
    got: dict[int, np.ndarray] = {}
    _collect(enumerate(container.decode(stream)), wanted, got)
    return got


def _decode_runs(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    runs: list[list[int]],
    index: VideoIndex,
) -> dict[int, np.ndarray]:
    """Each run decoded from a seek to the keyframe before its first frame; a frame is known by its timestamp."""
    where = {pts: i for i, pts in enumerate(index.pts)}
    got: dict[int, np.ndarray] = {}
    for run in runs:
        container.seek(index.pts[index.keyframe_before(run[0])], stream=stream, backward=True)
        _collect(((where.get(frame.pts, -1), frame) for frame in container.decode(stream)), run, got)
    return got


def _collect(numbered: Iterable[tuple[int, av.VideoFrame]], run: list[int], got: dict[int, np.ndarray]) -> None:
    """Into `got`: the frames of `run` (sorted frame indices) among `numbered` frames, read up to the last one."""
    for i, frame in numbered:
        if i in run:
            got[i] = _to_rgb(frame)
        if i >= run[-1]:
            break


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
