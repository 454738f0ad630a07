"""`s4v data check`: reconcile a dataset's annotations with its files and probe every listed video.

Each listed video is probed in a process pool, one PyAV pass over its bytes as the loader reads them: the
container opens, it has a video stream, its video packets are counted (the frame count the loader samples
from, held against the count the container declares, as the loader's own probe does) and its first frames
decode. `--full` decodes every frame, which also catches corruption in the middle of a file: the loader
decodes up to its last sampled frame, so only a full check guarantees that it meets no bad video. Frame
folders (SSv1) count their images and decode the first (`--full`: all). A bad video gets exactly one of
`check_report.BAD_REASONS`; fewer frames than `--num-frames` is a warning (the sampler repeats frames), and
a file under the root that no annotation lists is reported as unlisted, not bad. The same demux pass indexes each
usable file (`s4v.data.video_index`: frame count, size, keyframes) for `data.video_index`, and each split's count is
held against the official one of its dataset (`s4v.data.official`), with a fingerprint of its annotation file.

Exit code 0: no bad video; 1: bad videos (one `path: reason` line each); 2: usage error. The skip list it
writes holds the bad videos' paths exactly as the loader's records spell them, for `data.skip_list`.
"""

from __future__ import annotations

import argparse
import difflib
import io
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from time import perf_counter
from typing import Any, get_args

import av
from PIL import Image

from s4v.core.errors import UserError
from s4v.core.progress import progress
from s4v.data.annotations import read_split
from s4v.data.check_report import summarise, summary_lines, write_report
from s4v.data.config import DataConfig, Format
from s4v.data.decode import FRAME_EXTS, declared_frames, index_from_packets
from s4v.data.official import annotation_fingerprint
from s4v.data.records import VideoRecord
from s4v.data.video_index import index_entry, write_video_index

SPLITS = ("train", "val")
FIRST_FRAMES = 3  # decoded by the quick probe: the loader always decodes from frame 0
CHUNK = 16  # most videos per pool task: amortises inter-process traffic
# Files that count as videos when looking for unlisted ones, besides the extensions the annotations use.
VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ogv", ".3gp")


@dataclass
class Probe:
    """What probing one listed video found; `reason` is None for a usable video."""

    path: str
    reason: str | None = None
    detail: str = ""  # what exactly failed, for the report
    frames: int | None = None
    fps: float | None = None
    duration: float | None = None  # seconds
    width: int | None = None
    height: int | None = None
    seconds: float = 0.0  # time the probe took
    index: dict[str, Any] | None = field(default=None, repr=False)  # a usable file's video_index.jsonl line


def probe_video(path: str, full: bool = False) -> Probe:
    """Probe one video file or frame folder (see the module docstring); never raises."""
    t0 = perf_counter()
    try:
        result = _probe_folder(Path(path), full) if Path(path).is_dir() else _probe_file(path, full)
    except Exception as e:  # as in the loader: whatever fails on one video is that video's failure
        result = Probe(path, "unreadable", f"{type(e).__name__}: {e}")
    result.seconds = perf_counter() - t0
    return result


def _probe_chunk(paths: list[str], full: bool) -> list[Probe]:
    return [probe_video(p, full) for p in paths]


def _probe_file(path: str, full: bool) -> Probe:
    try:
        stat = os.stat(path)  # before reading: a file that changes after the read must look changed to the index
        data = Path(path).read_bytes()  # the loader decodes the bytes too, so both see the same input
    except FileNotFoundError:
        return Probe(path, "missing")
    except OSError as e:
        return Probe(path, "unreadable", e.strerror or str(e))
    if not data:
        return Probe(path, "empty")
    try:
        container = av.open(io.BytesIO(data))
    except av.FFmpegError as e:
        return Probe(path, "unreadable", str(e))
    with container:
        if not container.streams.video:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            return Probe(path, "no video stream", f"streams: {kinds}")
        return _scan_stream(path, container, full, stat)


def _scan_stream(path: str, container: av.container.InputContainer, full: bool, stat: os.stat_result) -> Probe:
    """Count the video packets, decoding the first frames (all with `full`) on the way; a usable file's Probe
    carries its index line, stamped with the file's `stat`."""
    stream = container.streams.video[0]
    stream.thread_type = "NONE"  # the pool parallelises over videos; codec threads only add overhead
    declared = declared_frames(stream, container)  # the loader's rule, so a video it probes fine passes here
    declared_size = (stream.codec_context.height, stream.codec_context.width)  # index_video's, read before decoding
    stamps: list[tuple[int | None, bool]] = []  # what index_video lists, from this same pass
    decoded = 0
    size: tuple[int, int] | None = None
    error = ""
    try:
        for packet in container.demux(stream):
            if packet.size:
                stamps.append((packet.pts, packet.is_keyframe))
            if error or not (full or decoded < FIRST_FRAMES):
                continue
            try:
                for frame in packet.decode():
                    size = size or (frame.width, frame.height)
                    decoded += 1
            except av.FFmpegError as e:  # the loader decodes from frame 0 on, so it would fail here too
                error = f"frame {decoded} does not decode ({e})"
    except av.FFmpegError as e:
        return Probe(path, "unreadable", f"demuxing stops after {len(stamps)} packets ({e})")
    packets = len(stamps)
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else None
    if container.duration:
        duration = container.duration / av.time_base
    elif stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    else:
        duration = packets / fps if fps else None
    width, height = size or (stream.codec_context.width or None, stream.codec_context.height or None)
    found = Probe(path, None, "", packets, fps, duration, width, height)
    if packets == 0:
        return replace(found, reason="no frames", detail="no video packets")
    if decoded == 0:
        return replace(found, reason="no frames", detail=error or f"none of {packets} packets decodes")
    if error:
        return replace(found, reason="unreadable", detail=error)
    if packets < declared:
        return replace(found, reason="unreadable", detail=f"truncated: {packets} of {declared} frames present")
    if full and decoded < packets:
        return replace(found, reason="unreadable", detail=f"only {decoded} of {packets} frames decode")
    return replace(found, index=index_entry(path, index_from_packets(stamps, declared_size), stat))


def _probe_folder(folder: Path, full: bool) -> Probe:
    entries = list(folder.iterdir())
    images = sorted(p for p in entries if p.suffix.lower() in FRAME_EXTS)  # the loader's frame files
    if not images:
        return Probe(str(folder), "no frames" if entries else "empty", "no frame images" if entries else "")
    size = None
    for image in images if full else images[:1]:
        try:
            with Image.open(image) as im:
                size = size or im.size
                im.convert("RGB")
        except (OSError, ValueError) as e:
            return Probe(str(folder), "unreadable", f"{image.name}: {e}", frames=len(images))
    return Probe(str(folder), None, "", len(images), None, None, *size)


def probe_all(paths: list[str], workers: int, full: bool) -> dict[str, Probe]:
    """Probe `paths` in `workers` processes behind a progress display."""
    size = max(1, min(CHUNK, len(paths) // (4 * workers)))  # >= 4 tasks a worker: balanced, a smooth display
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    found: dict[str, Probe] = {}
    bad = 0
    every = max(1, len(paths) // 20)  # ~20 lines in a log, or one per 30 s
    with progress(len(paths), "probe", unit="video", every_steps=every) as bar:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for future in as_completed([pool.submit(_probe_chunk, chunk, full) for chunk in chunks]):
                results = future.result()
                found.update((r.path, r) for r in results)
                bad += sum(r.reason is not None for r in results)
                bar.set_postfix(bad=bad)
                bar.update(len(results))
    return found


def find_unlisted(root: Path, listed: set[str], skip_dir: str, exts: set[str]) -> list[str]:
    """Video files and frame folders under `root` that no annotation lists (normalised paths in `listed`).

    A folder is taken as a frame folder when it is listed, or when it holds images and no video file.
    """
    unlisted = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if os.path.abspath(here / d) != skip_dir)  # not our own report
        videos = [f for f in filenames if Path(f).suffix.lower() in exts]
        if here != root and (os.path.normpath(here) in listed or (not videos and _has_images(filenames))):
            dirnames[:] = []  # a frame folder: its files are its frames
            if os.path.normpath(here) not in listed:
                unlisted.append(str(here))
            continue
        unlisted += [str(here / f) for f in sorted(videos) if os.path.normpath(here / f) not in listed]
    return sorted(unlisted)


def _has_images(filenames: list[str]) -> bool:
    return any(Path(f).suffix.lower() in FRAME_EXTS for f in filenames)


def run_check(
    data: DataConfig, splits: list[str], workers: int, full: bool, out: Path
) -> tuple[dict[str, Any], list[Path]]:
    """Read, reconcile, probe, write the report; returns the report document and the files written."""
    data = replace(data, skip_list=None)  # check every annotated video, also those a skip list leaves out
    root = Path(data.root)
    records = {split: [r.path for r in _read(data, split)] for split in splits}
    listed = {os.path.normpath(p) for paths in records.values() for p in paths}
    notes = []
    for split in (s for s in SPLITS if s not in splits):  # its videos are listed, though not checked
        try:
            listed |= {os.path.normpath(r.path) for r in _read(data, split)}
        except UserError as e:
            notes.append(f"the {split} annotation was not read, so its videos may show as unlisted ({e})")
    exts = {*VIDEO_EXTS, data.video_ext.lower(), *(Path(p).suffix.lower() for p in listed)} - {""}
    unlisted = find_unlisted(root, listed, os.path.abspath(out), exts)
    paths = sorted({p for ps in records.values() for p in ps})
    workers = max(1, min(workers, len(paths)))
    t0 = perf_counter()
    probes = probe_all(paths, workers, full)
    wall_s = perf_counter() - t0
    videos = [asdict(probes[p]) for p in paths]
    index = [line for v in videos if (line := v.pop("index")) is not None]  # video_index.jsonl's, not the report's
    meta = {"root": str(root), "fmt": data.fmt, "splits": splits, "num_frames": data.num_frames, "full": full}
    annotations = {split: annotation_fingerprint(data, split) for split in splits}
    doc = summarise(meta, records, videos, unlisted, notes, {"workers": workers, "wall_s": wall_s}, annotations)
    return doc, [*write_report(doc, out), write_video_index(index, out, {"root": str(root), "fmt": data.fmt})]


def _read(data: DataConfig, split: str) -> list[VideoRecord]:
    try:
        return read_split(data, split).records
    except OSError as e:  # an annotation file that cannot be opened (Kinetics' csv reader opens it as is)
        raise UserError(f"{split} annotation of {data.root}: {e}") from None


def _data_config(a: argparse.Namespace) -> DataConfig:
    """`data.*` of the run config (when given) and its overrides, then the command's own options."""
    from s4v.config import load_config

    if a.root is None and a.config is None and not any(o.startswith("data.root=") for o in a.overrides):
        raise UserError("s4v data check: pass --root, or --config (or data.root=...) to read data.root from")
    if a.fmt is not None and a.fmt not in get_args(Format):
        close = difflib.get_close_matches(a.fmt, get_args(Format), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"--fmt {a.fmt!r} is not one of {', '.join(map(repr, get_args(Format)))}{hint}")
    data = load_config(a.config, a.overrides).data
    data = replace(data, root=a.root or data.root, fmt=a.fmt or data.fmt, num_frames=a.num_frames or data.num_frames)
    if not Path(data.root).is_dir():
        raise UserError(f"data root {data.root!r} is not a directory")
    return data


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="s4v data", description="dataset tools")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    paragraphs = __doc__.split("\n\n")
    c = sub.add_parser("check", help=paragraphs[0], description=f"{paragraphs[0]} {paragraphs[-1]}")
    c.add_argument("--root", help="dataset root (default: data.root of --config)")
    c.add_argument("--fmt", help=f"annotation format: {', '.join(get_args(Format))} (default: data.fmt)")
    c.add_argument("--splits", nargs="+", default=list(SPLITS), help="splits to check (default: train val)")
    c.add_argument("--num-frames", type=int, help="frames per clip; fewer is a warning (default: data.num_frames)")
    c.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="probe processes (default: all cores)")
    c.add_argument("--out", type=Path, help="report folder (default: outputs/data_check/<root folder name>)")
    c.add_argument("--full", action="store_true", help="decode every frame (catches corruption mid-file)")
    c.add_argument("--config", help="run config whose data.* section describes the dataset")
    c.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="run-config overrides, e.g. data.root=/data")
    a = p.parse_args(argv)
    # `--splits` takes every word after it; a split name has no '=', so such words are the overrides.
    a.overrides += [s for s in a.splits if "=" in s]
    a.splits = list(dict.fromkeys(s for s in a.splits if "=" not in s))
    wrong = [s for s in a.splits if s not in SPLITS]
    if wrong or not a.splits:
        raise UserError(f"--splits {' '.join(wrong)}: splits are {' and '.join(SPLITS)}")
    if a.workers < 1 or (a.num_frames is not None and a.num_frames < 1):
        raise UserError("--workers and --num-frames must be at least 1")
    data = _data_config(a)
    out = a.out or Path("outputs/data_check") / (Path(data.root).resolve().name or "root")
    doc, files = run_check(data, a.splits, a.workers, a.full, out)
    print("\n".join(summary_lines(doc, files)))
    return 1 if doc["bad"] else 0
