"""The official split sizes of the datasets the paper reports on, and a fingerprint of a copy's annotation files.

Most reported reproduction gaps come from the dataset copy (a Kinetics validation split that lost videos to
YouTube takedowns, a regenerated annotation list) or from the sampling, so `s4v data check` prints each split's usable
videos beside the official count and says when they differ. A differing copy is a warning, not a failure: subsets
are legitimate, but their results are not directly comparable with the paper's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s4v.data.config import DataConfig

FINGERPRINT_CHARS = 12  # of the sha256 hex digest: enough to tell two annotation files apart, short enough to read


@dataclass(frozen=True)
class Count:
    """Videos in one split of a published list; `source` names the list in the check's output."""

    videos: int
    source: str


# data.fmt -> split -> counts. The first is the release the paper's numbers are measured on; any others are widely
# used variants that a copy may match instead (named so that the report can say which one the copy is).
OFFICIAL: dict[str, dict[str, tuple[Count, ...]]] = {
    # Something-Something v2 (Goyal et al., ICCV 2017), something-something-v2-{train,validation}.json:
    # 168,913 / 24,777 videos (the counts VideoMAE v2's and TSM's data documentation list for the release).
    "ssv2": {"train": (Count(168_913, "the SSv2 release"),), "val": (Count(24_777, "the SSv2 release"),)},
    # Something-Something v1 (same paper), 108,499 videos: 86,017 train / 11,522 validation / 10,960 test (the
    # release's train / validation csv files; torchstream's dataset tests assert the same two sizes).
    "ssv1": {"train": (Count(86_017, "the SSv1 release"),), "val": (Count(11_522, "the SSv1 release"),)},
    # Kinetics-400 (Kay et al., arXiv:1705.06950): the release's train.csv / validate.csv list 246,534 / 19,906 clips
    # (FiftyOne's dataset zoo, "CVDF split stats", the full release mirrored by the CVDF); the paper's 306,245 clips
    # count the 40,000-clip test split too. Since YouTube videos disappear, most copies are smaller: mmaction2's,
    # on which many public checkpoints are trained, holds 240,436 / 19,796 (its tools/data/kinetics/README.md).
    "k400": {
        "train": (Count(246_534, "the Kinetics-400 release csv"), Count(240_436, "mmaction2's copy")),
        "val": (Count(19_906, "the Kinetics-400 release csv"), Count(19_796, "mmaction2's copy")),
    },
    # MSR-VTT (Xu et al., CVPR 2016): 10,000 clips, officially 6,513 train / 497 val / 2,990 test. Retrieval uses
    # the 1k-A test split of JSFusion (Yu et al., ECCV 2018; MSRVTT_JSFUSION_test.csv, 1,000 videos) and trains on
    # the 9k split (MSRVTT_train.9k.csv: the other 9,000) or the 7k one (MSRVTT_train.7k.csv: 6,513 + 497 = 7,010).
    "msrvtt": {
        "train": (Count(9_000, "the MSR-VTT 9k split"), Count(7_010, "the MSR-VTT 7k split")),
        "val": (Count(1_000, "the MSR-VTT 1k-A test split"),),
    },
}


def annotation_file(data: DataConfig, split: str) -> Path:
    """The split's annotation file, resolved against the root as the annotation readers resolve it."""
    return Path(data.root) / (data.train_list if split == "train" else data.val_list)


def annotation_fingerprint(data: DataConfig, split: str) -> dict[str, str]:
    """{"file", "sha256"}: the split's annotation file and the short sha256 of its bytes, so two copies' reports
    show at a glance whether they trained or evaluated on the same list."""
    path = annotation_file(data, split)
    return {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:FINGERPRINT_CHARS]}


def compare(fmt: str, split: str, listed: int, usable: int) -> dict[str, Any] | None:
    """The split's usable videos (what training or evaluation sees once the skip list leaves the bad ones out)
    held against the official count; None for a format without one (a private list, the synthetic set)."""
    counts = OFFICIAL.get(fmt, {}).get(split)
    if not counts:
        return None
    reference = counts[0]
    return {
        "videos": reference.videos,
        "source": reference.source,
        "listed": listed,
        "usable": usable,
        "difference": usable - reference.videos,
        "matches": next((c.source for c in counts if c.videos == usable), None),
    }


def comparison_lines(doc: dict[str, Any]) -> list[str]:
    """One line per split of the check's report document: its count against the official one, a `warning:` when
    they differ, and the annotation fingerprint."""
    lines = []
    for split, s in doc["summary"].items():
        sha = f"annotation sha256 {s['annotation']['sha256']}"
        official = s["official"]
        if official is None:
            lines.append(f"{split}: no official count for format {doc['fmt']!r}; {sha}")
            continue
        usable = f"{official['usable']:,} usable videos"
        if official["listed"] != official["usable"]:
            usable += f" of {official['listed']:,} listed"
        if official["difference"] == 0:
            lines.append(f"{split}: {usable}, as in {official['source']}; {sha}")
            continue
        diff = official["difference"]
        what = f"{abs(diff):,} {'fewer' if diff < 0 else 'more'}"
        if official["matches"]:
            what += f"; the count of {official['matches']}"
        lines.append(
            f"warning: {split}: {usable}, {official['source']} has {official['videos']:,} ({what}): results on "
            f"this copy are not directly comparable with the paper's; {sha}"
        )
    return lines
