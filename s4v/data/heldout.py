"""The held-out carve: a fixed subset of the training split kept out of training, for selecting runs on.

`data.heldout_fraction` holds out a share of every class; `data.heldout_list` names the videos instead. The
carve is a function of the training annotation alone (never of the seed, world size, epoch or resume point),
so every run and every member of a sweep on the same annotation holds out the same videos:

- Stratified by class: each class with n >= 2 videos holds out floor(fraction * n + 1/2) of them, at least one
  and never all, so a per-class accuracy exists for every class and training still sees every class. A
  global draw leaves small classes unrepresented, or wholly held out, on small sets. The retrieval formats
  (each video its own class) are one stratum.
- Within a class, the videos with the smallest sha256 of their path relative to `data.root` are taken: the
  choice survives moving the dataset, reordering the annotation file and other classes changing.

`s4v.data.annotations.read_carved` applies it; `heldout_summary` is what a run records of it.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Protocol

from s4v.core.errors import UserError
from s4v.data.config import DataConfig
from s4v.data.records import VideoRecord


class _Loader(Protocol):
    """What `heldout_summary` reads of a `VideoLoader` (named structurally: the loader imports this module)."""

    cfg: DataConfig
    split: str
    records: list[VideoRecord]
    heldout: list[VideoRecord] | None


def check_heldout(cfg: DataConfig) -> None:
    """One-line UserErrors for values the field types cannot rule out (run at config load and by the reader)."""
    f = cfg.heldout_fraction
    if not 0 <= f < 1:
        raise UserError(f"data.heldout_fraction: {f} is not in [0, 1) (the share of each class held out; 0: none)")
    if f and cfg.heldout_list is not None:
        raise UserError(
            f"data.heldout_fraction: {f} and data.heldout_list {cfg.heldout_list!r} are both set; choose one"
        )


def carves(cfg: DataConfig) -> bool:
    return bool(cfg.heldout_fraction) or cfg.heldout_list is not None


def video_key(path: str, root: str) -> str:
    """A record's path relative to `root` (as written when outside it): what the carve ranks and fingerprints."""
    p, r = Path(os.path.normpath(path)), Path(os.path.normpath(root))
    return (p.relative_to(r) if p.is_relative_to(r) else p).as_posix()


def _rank(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _count(fraction: float, n: int) -> int:
    """Held-out videos of a class of n: rounded half up (Python's round() rounds 2.5 to 2), 1..n-1."""
    if n < 2:
        return 0
    return min(n - 1, max(1, math.floor(fraction * n + 0.5)))


def carve_fraction(records: list[VideoRecord], root: str, fraction: float, stratify: bool) -> list[int]:
    """Positions in `records` held out by `fraction`, stratified by label when `stratify`."""
    strata: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        strata[r.label if stratify else 0].append(i)
    held: list[int] = []
    for members in strata.values():
        ranked = sorted(members, key=lambda i: _rank(video_key(records[i].path, root)))
        held += ranked[: _count(fraction, len(members))]
    if not held:
        raise UserError(
            f"data.heldout_fraction: {fraction} holds out no video: no class of the train split has two videos"
        )
    return sorted(held)


def heldout_summary(loader: _Loader) -> dict[str, Any] | None:
    """What a run records of its held-out set (run meta "heldout"), from its train or heldout loader: the
    options that made it, its video count (after `data.skip_list`) and the short sha256 of its sorted paths
    relative to `data.root`, equal on every machine, world size and seed. None when nothing is held out."""
    records = loader.records if loader.split == "heldout" else loader.heldout
    if records is None:
        return None
    cfg = loader.cfg
    keys = sorted(video_key(r.path, cfg.root) for r in records)
    return {
        "fraction": cfg.heldout_fraction,
        "list": cfg.heldout_list,
        "videos": len(keys),
        "sha256": hashlib.sha256("\n".join(keys).encode()).hexdigest()[:12],
    }
