"""Text-video retrieval annotations as distributed: MSR-VTT, MSVD, VATEX.

Each split becomes video records (every video is its own class: label = its index in the split) plus
every caption of every video, aligned with the records. Training samples one caption per video and
step; testing follows each dataset's protocol: MSR-VTT 1k-A has one caption per test video (the
JSFUSION csv), MSVD and VATEX test all captions of a video (multi-caption ranking).

- MSR-VTT: `MSRVTT_data.json` ({"sentences": [{"video_id", "caption"}]}), `MSRVTT_train.9k.csv`
  (column video_id), `MSRVTT_JSFUSION_test.csv` (columns key, vid_key, video_id, sentence).
- MSVD: `raw-captions.pkl` ({video_id: [[word, ...], ...]}), `train_list.txt` / `test_list.txt`.
- VATEX: `vatex_training_v1.0.json` / the test json, lists of {"videoID", "enCap": [...]}.
"""

from __future__ import annotations

import csv
import json
import pickle
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from s4v.data.records import AnnotationError, VideoRecord

CAPTION_FORMATS = ("msrvtt", "msvd", "vatex")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv")
DEFAULT_CAPTION_FILES = {"msrvtt": "MSRVTT_data.json", "msvd": "raw-captions.pkl"}  # VATEX: captions in the split


@dataclass
class CaptionSplit:
    """Videos of one split and, aligned with them, the captions of each video."""

    records: list[VideoRecord]
    video_ids: list[str]
    captions: list[list[str]]

    def flat(self) -> tuple[list[str], list[int]]:
        """All captions and, for each, the index of its video (the test-time similarity layout)."""
        texts = [c for caps in self.captions for c in caps]
        owner = [i for i, caps in enumerate(self.captions) for _ in caps]
        return texts, owner


def video_path(root: Path, video_id: str) -> Path:
    """The file of `video_id` under root or root/videos, whatever its container."""
    for folder in (root / "videos", root):
        for ext in VIDEO_EXTENSIONS:
            if (path := folder / f"{video_id}{ext}").exists():
                return path
    return root / "videos" / f"{video_id}.mp4"  # missing: the loader reports it as a bad video


def _csv_rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise AnnotationError(f"{path}: missing column(s) {missing}; header is {reader.fieldnames}")
        return list(reader)


def _msrvtt(split_file: Path, data_file: Path) -> tuple[list[str], list[list[str]]]:
    rows = _csv_rows(split_file, ("video_id",))
    if rows and "sentence" in rows[0]:  # JSFUSION test csv: exactly the caption to rank
        return [r["video_id"] for r in rows], [[r["sentence"]] for r in rows]
    by_video: dict[str, list[str]] = defaultdict(list)
    for entry in json.loads(data_file.read_text())["sentences"]:
        by_video[entry["video_id"]].append(entry["caption"])
    ids = [r["video_id"] for r in rows]
    return ids, [by_video[v] for v in ids]


def _msvd(split_file: Path, data_file: Path) -> tuple[list[str], list[list[str]]]:
    with data_file.open("rb") as f:
        raw = pickle.load(f)  # noqa: S301  (the format MSVD's captions are distributed in)
    ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    return ids, [[" ".join(words) for words in raw.get(v, [])] for v in ids]


def _vatex(split_file: Path, data_file: Path | None) -> tuple[list[str], list[list[str]]]:
    entries = json.loads(split_file.read_text())
    return [e["videoID"] for e in entries], [list(e["enCap"]) for e in entries]


READERS = {"msrvtt": _msrvtt, "msvd": _msvd, "vatex": _vatex}


def load_caption_split(
    fmt: str, root: str | Path, split_file: str | Path, caption_file: str | Path | None
) -> CaptionSplit:
    """Read one split; errors name the file and the video that is wrong."""
    if fmt not in READERS:
        raise AnnotationError(f"unknown caption format {fmt!r}; choose one of {CAPTION_FORMATS}")
    root = Path(root)
    split_file = root / split_file
    name = caption_file or DEFAULT_CAPTION_FILES.get(fmt)
    data_file = root / name if name else None
    for path in (split_file, data_file):
        if path is not None and not path.is_file():
            raise AnnotationError(f"{fmt}: annotation file not found: {path}")
    try:
        ids, captions = READERS[fmt](split_file, data_file)
    except (KeyError, json.JSONDecodeError, pickle.UnpicklingError) as e:
        raise AnnotationError(f"{split_file}: malformed {fmt} annotation ({e!r})") from e
    empty = next((v for v, c in zip(ids, captions, strict=True) if not c), None)
    if empty is not None:
        raise AnnotationError(f"{split_file}: video {empty} has no caption in {data_file}")
    records = [VideoRecord(str(video_path(root, v)), i) for i, v in enumerate(ids)]
    return CaptionSplit(records, ids, captions)
