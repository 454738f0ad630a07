"""The video index `s4v data check` writes next to its report, so that the loader need not demux every file on
every read to learn its frame count, frame size and keyframes.

`video_index.jsonl`: a header line, then one line per usable video file (frame folders are left out: the loader
counts their images with one directory listing). Each line holds the file's path as the loader's records spell it
(normalised, as the skip list is matched), the file's byte size and modification time when the check read it, and
what `VideoIndex` holds: frames, size (height, width) and, where seeking can use them, keyframes and pts: as
{"start", "step"} when evenly spaced (almost every file), else the list. A file whose size or mtime changed since the
check, or one the index does not list, is demuxed as before (`index_of`), so a stale index costs speed, never
correctness.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from s4v.core.errors import UserError
from s4v.data.decode import VideoIndex, index_video

INDEX_FILE = "video_index.jsonl"
VERSION = 1  # of the line layout; an index of another version is refused, not misread

log = logging.getLogger("s4v.data")


def index_entry(path: str, index: VideoIndex, stat: os.stat_result) -> dict[str, Any]:
    """One line of the index: `path`'s `index`, stamped with the `stat` taken before its bytes were read (so a
    file changed after it was read looks changed, never unchanged)."""
    entry: dict[str, Any] = {
        "path": os.path.normpath(path),
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "frames": index.frames,
        "size": list(index.size),
    }
    if index.pts:  # sorted and distinct, so one step between all neighbours means a range
        steps = {b - a for a, b in zip(index.pts[:-1], index.pts[1:], strict=True)}
        even = len(steps) <= 1
        entry["pts"] = {"start": index.pts[0], "step": steps.pop() if steps else 1} if even else list(index.pts)
        entry["keyframes"] = list(index.keyframes)
    return entry


def write_video_index(entries: list[dict[str, Any]], out: Path, meta: dict[str, Any]) -> Path:
    """`out/video_index.jsonl`: a header (`meta`, e.g. root and format, and the count), then `entries`."""
    path = out / INDEX_FILE
    header = {"s4v_video_index": VERSION, **meta, "videos": len(entries)}
    with path.open("w") as f:
        for line in (header, *entries):
            f.write(json.dumps(line, separators=(",", ":")) + "\n")
    return path


@dataclass(frozen=True, slots=True)
class _Stored:
    """One video's line, kept compact (hundreds of thousands per loader process); the VideoIndex, whose pts tuple
    is the large part, is built only when the video is read."""

    bytes: int
    mtime_ns: int
    frames: int
    size: tuple[int, int]
    keyframes: tuple[int, ...]
    pts: tuple[int, ...] | range

    def index(self) -> VideoIndex:
        return VideoIndex(self.frames, tuple(self.pts), self.keyframes, self.size)


class StoredIndex:
    """A loaded index file: `lookup` gives a video's `VideoIndex` when the file is unchanged since the check."""

    def __init__(self, source: str, videos: dict[str, _Stored]) -> None:
        self.source, self.videos = source, videos
        self._warned = False

    def __len__(self) -> int:
        return len(self.videos)

    def lookup(self, path: str, data: bytes) -> VideoIndex | None:
        """`path`'s stored index if it lists the file with the size of `data` (the bytes just read) and the file's
        current mtime; None otherwise (the caller demuxes `data`)."""
        stored = self.videos.get(os.path.normpath(path))
        if stored is not None and stored.bytes == len(data):
            try:
                if os.stat(path).st_mtime_ns == stored.mtime_ns:
                    return stored.index()
            except OSError:
                pass  # gone since it was read: demuxing the bytes in hand still works
        if not self._warned:  # once per process: a stale or foreign index would otherwise warn on every read
            self._warned = True
            log.warning(
                "data.video_index %s does not list %s as it is now (changed since the check, or not checked): "
                "demuxing it, and any other such video, as without an index",
                self.source,
                path,
            )
        return None


@lru_cache(maxsize=4)
def load_video_index(source: str) -> StoredIndex:
    """Read an index file (once per process and file); UserError if it is missing or not an s4v video index."""
    try:
        with open(source) as f:  # line by line: a Kinetics-sized index is ~40 MiB of text
            return StoredIndex(source, _read_lines(f))
    except OSError as e:
        raise UserError(f"data.video_index: cannot read {source!r} ({e.strerror})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # not JSON, or not our lines
        raise UserError(
            f"data.video_index: {source!r} is not a version-{VERSION} index written by `s4v data check` ({e}); "
            "run the check again"
        ) from None


def _read_lines(lines: Iterable[str]) -> dict[str, _Stored]:
    rest = iter(lines)
    header = next(rest, "")
    if not header.strip() or json.loads(header).get("s4v_video_index") != VERSION:
        raise ValueError(f"header {header[:80]!r}")
    return dict(_parse(json.loads(line)) for line in rest if line.strip())


def _parse(entry: dict[str, Any]) -> tuple[str, _Stored]:
    pts = entry.get("pts", [])
    if isinstance(pts, dict):  # evenly spaced: a range holds the frames' stamps in a few bytes
        pts = range(pts["start"], pts["start"] + pts["step"] * entry["frames"], pts["step"])
    else:
        pts = tuple(pts)
    stored = _Stored(
        entry["bytes"], entry["mtime_ns"], entry["frames"], tuple(entry["size"]), tuple(entry.get("keyframes", ())), pts
    )
    return entry["path"], stored


def index_of(path: str, data: bytes, video_index: str | None) -> VideoIndex:
    """The loader's way to index a video file whose bytes it has read: from the index file `video_index`
    (`data.video_index`) when that lists the file unchanged, else by demuxing `data` (`index_video`, which also
    raises BadVideo for a file that cannot be used)."""
    if video_index is not None:
        found = load_video_index(video_index).lookup(path, data)
        if found is not None:
            return found
    return index_video(path, data)
