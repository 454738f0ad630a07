"""Annotation formats -> (video path, label) records and class names.

Formats as distributed: SSv2 json (labels.json + train/validation json), SSv1 csv (`id;class name`,
frames as JPEG folders), Kinetics-400 csv (`label,youtube_id,time_start,time_end,split`), and a
generic list (`path label` or TSN-style `path num_frames label`); the retrieval formats (MSR-VTT,
MSVD, VATEX) are read by `s4v.data.captions`. A malformed entry raises `AnnotationError` naming the
file and line. `DataConfig.skip_list` (e.g. the one `s4v data check` writes) leaves videos out of a split.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from s4v.core.errors import UserError
from s4v.data.captions import CAPTION_FORMATS, CaptionSplit, load_caption_split
from s4v.data.config import DataConfig
from s4v.data.records import AnnotationError, VideoRecord

log = logging.getLogger("s4v.data")


@dataclass(frozen=True)
class Split:
    """One split as the loader needs it; the retrieval formats also keep the captions they read."""

    records: list[VideoRecord]
    classes: list[str]
    captions: CaptionSplit | None = None


def _resolve(root: Path, name: str | None) -> Path | None:
    if name is None:
        return None
    p = Path(name)
    return p if p.is_absolute() else root / p


def _read_classes(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read class file ({e})") from e


def load_list(path: Path, root: Path) -> list[VideoRecord]:
    records = []
    for lineno, line in enumerate(_lines(path), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) not in (2, 3) or not all(p.lstrip("-").isdigit() for p in parts[1:]):
            raise AnnotationError(f"{path}:{lineno}: expected 'path label' or 'path num_frames label': {line!r}")
        label = int(parts[-1])
        if label < 0:
            raise AnnotationError(f"{path}:{lineno}: negative label {label}")
        records.append(VideoRecord(str(root / parts[0]), label))
    return records


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read annotation file ({e})") from e


def _lines(path: Path) -> list[str]:
    return _text(path).splitlines()


def load_ssv2(path: Path, root: Path, labels: Path) -> tuple[list[VideoRecord], list[str]]:
    try:
        label_map = {k: int(v) for k, v in json.loads(labels.read_text()).items()}
    except (OSError, ValueError, AttributeError) as e:
        raise AnnotationError(f"{labels}: not an SSv2 labels json ({e})") from e
    try:
        entries = json.loads(_text(path))
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}:{e.lineno}: invalid json ({e.msg})") from e
    records = []
    for i, entry in enumerate(entries):
        try:
            template = entry["template"].replace("[", "").replace("]", "")
            records.append(VideoRecord(str(root / f"{entry['id']}.webm"), label_map[template]))
        except (KeyError, TypeError, AttributeError) as e:
            raise AnnotationError(f"{path}: entry {i}: missing or unknown field {e} in {entry!r}") from e
    names = sorted(label_map, key=label_map.__getitem__)
    return records, names


def load_ssv1(path: Path, root: Path, labels: Path) -> tuple[list[VideoRecord], list[str]]:
    names = _read_classes(labels)
    index = {n: i for i, n in enumerate(names)}
    records = []
    for lineno, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        vid, sep, name = line.partition(";")
        if not sep or name.strip() not in index:
            raise AnnotationError(f"{path}:{lineno}: expected 'id;class name' with a class of {labels}")
        records.append(VideoRecord(str(root / vid.strip()), index[name.strip()]))
    return records, names


def _k400_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"label", "youtube_id", "time_start", "time_end"} - set(reader.fieldnames or ())
        if missing:
            raise AnnotationError(f"{path}:1: missing columns {sorted(missing)}")
        return [(i, row) for i, row in enumerate(reader, 2)]


def load_k400(path: Path, root: Path, names: list[str], ext: str) -> list[VideoRecord]:
    index = {n: i for i, n in enumerate(names)}
    records = []
    for lineno, row in _k400_rows(path):
        try:
            stem = f"{row['youtube_id']}_{int(row['time_start']):06d}_{int(row['time_end']):06d}{ext}"
            label = index[row["label"]]
        except (KeyError, ValueError, TypeError) as e:
            raise AnnotationError(f"{path}:{lineno}: malformed row {row} ({e!r})") from e
        class_dir = root / row["label"]  # the official downloader's layout, else a flat folder
        records.append(VideoRecord(str(class_dir / stem if class_dir.is_dir() else root / stem), label))
    return records


def read_skip_list(path: str, root: Path) -> set[str]:
    """Normalised paths of a skip list: each entry as written (a VideoRecord path, as `s4v data check`
    writes them) and, when relative, also under `root` (a path as the annotation files name it)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise UserError(f"data.skip_list: cannot read {path!r} ({e.strerror})") from None
    entries = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    skip = {os.path.normpath(e) for e in entries}
    return skip | {os.path.normpath(root / e) for e in entries if not os.path.isabs(e)}


def _drop_skipped(loaded: Split, skip: set[str]) -> Split:
    keep = [i for i, r in enumerate(loaded.records) if os.path.normpath(r.path) not in skip]
    if loaded.captions is None:
        return replace(loaded, records=[loaded.records[i] for i in keep])
    # Retrieval: each video is its own class, labelled by its position, so the survivors are renumbered.
    c = loaded.captions
    ids = [c.video_ids[i] for i in keep]
    records = [VideoRecord(c.records[i].path, label) for label, i in enumerate(keep)]
    return Split(records, ids, CaptionSplit(records, ids, [c.captions[i] for i in keep]))


def read_split(cfg: DataConfig, split: str) -> Split:
    """Read the annotation files of `split` ("train" | "val") once, whatever the format, less the videos
    of `cfg.skip_list`: they are left out before the loader shards the split, so they never count as bad."""
    if cfg.skip_list is None:
        return _read_annotations(cfg, split)
    skip = read_skip_list(cfg.skip_list, Path(cfg.root))
    loaded = _read_annotations(cfg, split)
    kept = _drop_skipped(loaded, skip)
    dropped = len(loaded.records) - len(kept.records)
    log.warning(
        "%s split: left out %d video(s) of data.skip_list %s, %d remain",
        split,
        dropped,
        cfg.skip_list,
        len(kept.records),
    )
    return kept


def _read_annotations(cfg: DataConfig, split: str) -> Split:
    root = Path(cfg.root)
    split_file = cfg.train_list if split == "train" else cfg.val_list
    if cfg.fmt in CAPTION_FORMATS:  # retrieval: each video is its own class, named by its id
        captions = load_caption_split(cfg.fmt, root, split_file, cfg.class_file)  # resolves against root itself
        return Split(captions.records, captions.video_ids, captions)
    ann = _resolve(root, split_file)
    classes = _resolve(root, cfg.class_file)
    if cfg.fmt == "ssv2":
        return Split(*load_ssv2(ann, root, classes or root / "something-something-v2-labels.json"))
    if cfg.fmt == "ssv1":
        return Split(*load_ssv1(ann, root, classes or root / "something-something-v1-labels.csv"))
    if cfg.fmt == "k400":
        if classes is not None:
            names = _read_classes(classes)
        else:  # Kinetics has no class file: classes are the sorted labels of the training csv
            names = sorted({row["label"] for _, row in _k400_rows(_resolve(root, cfg.train_list))})
        return Split(load_k400(ann, root, names, cfg.video_ext), names)
    records = load_list(ann, root)
    classes = classes or root / "classes.txt"
    if classes.exists():
        names = _read_classes(classes)
    else:
        names = [str(i) for i in range(max(r.label for r in records) + 1)] if records else []
    bad = next((r for r in records if r.label >= len(names)), None)
    if bad is not None:
        raise AnnotationError(f"{ann}: label {bad.label} of {bad.path} >= number of classes {len(names)}")
    return Split(records, names)
