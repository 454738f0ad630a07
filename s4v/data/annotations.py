"""Annotation formats -> (video path, label) records and class names.

Formats as distributed: SSv2 json (labels.json + train/validation json), SSv1 csv (`id;class name`,
frames as JPEG folders), Kinetics-400 csv (`label,youtube_id,time_start,time_end,split`), and a
generic list (`path label` or TSN-style `path num_frames label`); the retrieval formats (MSR-VTT,
MSVD, VATEX) are read by `s4v.data.captions`. A malformed entry raises `AnnotationError` naming the
file and line. `DataConfig.skip_list` (e.g. the one `s4v data check` writes) leaves videos out of a split;
`read_carved` deals the training split into the videos trained on and those held out (`s4v.data.heldout`).
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
from s4v.data.heldout import carve_fraction, carves, check_heldout
from s4v.data.records import AnnotationError, VideoRecord

log = logging.getLogger("s4v.data")


@dataclass(frozen=True)
class Split:
    """One split as the loader needs it; the retrieval formats also keep the captions they read. A training
    split carved by `read_carved` lists the videos it holds out in `heldout` (None: no carve)."""

    records: list[VideoRecord]
    classes: list[str]
    captions: CaptionSplit | None = None
    heldout: list[VideoRecord] | None = None


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


def _path_entries(path: str, key: str) -> list[str]:
    """The entries of a file of video paths (blank lines and `#` comments ignored); `key` names it in errors."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise UserError(f"{key}: cannot read {path!r} ({e.strerror})") from None
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _spellings(entries: list[str], root: Path) -> set[str]:
    """Normalised paths of list entries: each as written (a VideoRecord path, as `s4v data check` writes
    them) and, when relative, also under `root` (a path as the annotation files name it)."""
    listed = {os.path.normpath(e) for e in entries}
    return listed | {os.path.normpath(root / e) for e in entries if not os.path.isabs(e)}


def read_skip_list(path: str, root: Path) -> set[str]:
    """Normalised paths of a skip list (see `_spellings`)."""
    return _spellings(_path_entries(path, "data.skip_list"), root)


def _subset(loaded: Split, keep: list[int]) -> Split:
    """The records at positions `keep`, in file order, with their captions."""
    if loaded.captions is None:
        return replace(loaded, records=[loaded.records[i] for i in keep])
    # Retrieval: each video is its own class, labelled by its position, so the survivors are renumbered.
    c = loaded.captions
    ids = [c.video_ids[i] for i in keep]
    records = [VideoRecord(c.records[i].path, label) for label, i in enumerate(keep)]
    return Split(records, ids, CaptionSplit(records, ids, [c.captions[i] for i in keep]))


def _skipped(cfg: DataConfig, split: str, loaded: Split, report: bool = True) -> Split:
    """`loaded` less the videos of `cfg.skip_list` (their count logged when `report`)."""
    if cfg.skip_list is None:
        return loaded
    skip = read_skip_list(cfg.skip_list, Path(cfg.root))
    kept = _subset(loaded, [i for i, r in enumerate(loaded.records) if os.path.normpath(r.path) not in skip])
    if report:
        log.warning(
            "%s split: left out %d video(s) of data.skip_list %s, %d remain",
            split,
            len(loaded.records) - len(kept.records),
            cfg.skip_list,
            len(kept.records),
        )
    return kept


def read_split(cfg: DataConfig, split: str) -> Split:
    """Read the annotation files of `split` ("train" | "val") once, whatever the format, less the videos
    of `cfg.skip_list`: they are left out before the loader shards the split, so they never count as bad.
    "train" is every annotated training video: the loader reads it through `read_carved`."""
    return _skipped(cfg, split, _read_annotations(cfg, split))


def _listed(records: list[VideoRecord], path: str, root: Path) -> list[int]:
    """Positions of the records that `data.heldout_list` names (matched as skip list entries are)."""
    entries = _path_entries(path, "data.heldout_list")
    listed = _spellings(entries, root)
    held = [i for i, r in enumerate(records) if os.path.normpath(r.path) in listed]
    if not held:
        raise UserError(f"data.heldout_list: none of the {len(entries)} entries of {path!r} is a train split video")
    known = {os.path.normpath(r.path) for r in records}
    stray = [e for e in entries if not _spellings([e], root) & known]
    if stray:
        log.warning("data.heldout_list %s: %d entries name no train split video, e.g. %s", path, len(stray), stray[0])
    return held


def read_carved(cfg: DataConfig, part: str) -> Split:
    """The training split as the loader deals it: `part` "train", less the held-out videos (listed in its
    `heldout`), or "heldout", those videos in file order with their labels. Without a carve, "train" is
    `read_split(cfg, "train")`. The carve is made on the annotation, before `data.skip_list`, so a newer
    skip list never moves it; then each side loses its skipped videos."""
    check_heldout(cfg)  # Python callers bypass the config loader's check
    if not carves(cfg):
        if part == "heldout":
            raise UserError("heldout split: nothing is held out (set data.heldout_fraction or data.heldout_list)")
        return read_split(cfg, "train")
    loaded = _read_annotations(cfg, "train")
    if cfg.heldout_list is not None:
        held = _listed(loaded.records, cfg.heldout_list, Path(cfg.root))
    else:
        held = carve_fraction(loaded.records, cfg.root, cfg.heldout_fraction, stratify=loaded.captions is None)
    heldout = _skipped(cfg, "heldout", _subset(loaded, held), report=part == "heldout")
    if part == "heldout":
        return heldout
    chosen = set(held)
    train = _skipped(cfg, "train", _subset(loaded, [i for i in range(len(loaded.records)) if i not in chosen]))
    log.info("train split: %d video(s) held out, %d trained on", len(heldout.records), len(train.records))
    return replace(train, heldout=heldout.records)


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
