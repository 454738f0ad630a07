"""The DALI graph (`s4v.data.dali_pipeline`) on DALI's CPU backend: from the same draws it makes the clips the
PyTorch path makes from the frames DALI decodes, in the same layout; it resumes bitwise; it works ahead of the
training loop.

Tolerances, in 0..255 levels: the two paths share every draw and the geometry, and differ only in the resize
filter (DALI samples its antialiasing filter from a table, torch computes each weight) and in float rounding of
the normalisation. On natural frames that is at most 0.5 level; on the synthetic set's hard-edged shapes a few
edge pixels of a downscaled crop differ by up to 11 levels (measured: at most 0.1 % of the values over 1 level,
mean 0.003 level), so the bounds are on the mean and on the share of values more than a level off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from s4v.data import DataConfig, build_loader
from s4v.data.config import CLIP_STD
from s4v.data.dali import decode_clips
from s4v.data.prepare import finish, prepare

SEED, EPOCH = 5, 2
LEVEL = 1 / (255 * min(CLIP_STD))  # one 0..255 level in CLIP-normalised units (the largest channel step)


def _cfg(root: Path, **kw) -> DataConfig:
    base = dict(root=str(root), num_frames=4, image_size=32, batch_size=4, num_workers=1, backend="dali")
    return DataConfig(**{**base, **kw})


def _loader(cfg: DataConfig, split: str = "train"):
    ld = build_loader(cfg, split, seed=SEED)
    ld.set_epoch(EPOCH)
    return ld


def _pytorch_path(ld, index: torch.Tensor, repeats: int) -> torch.Tensor:
    """The batch rebuilt video by video: DALI's decoder for the frames, then `finish`, the PyTorch path."""
    out = []
    for i in index[::repeats].tolist():
        p = prepare(i, ld.records[i], ld.cfg, ld.train, SEED, EPOCH)
        frames = torch.from_numpy(decode_clips([p.data], [p.frames])[0])
        out.append(finish(p, frames, ld.cfg, ld.train))
    return torch.cat(out) if ld.train else torch.stack(out)


@pytest.mark.parametrize(
    "split, kw",
    [
        ("train", dict(num_repeats=2, flip=True, grayscale=0.5, crop_scale=(0.1, 1.0))),
        ("val", dict(test_crops=3, test_clips=2)),
        ("val", dict()),
    ],
    ids=["train-R2-flip-gray", "val-3x2", "val-1x1"],
)
def test_the_graph_makes_the_pytorch_clips_from_the_same_draws(synth: Path, split: str, kw: dict) -> None:
    ld = _loader(_cfg(synth, **kw), split)
    batches = list(ld)
    assert len(batches) == len(ld) and ld.bad_videos == []
    repeats = ld.cfg.num_repeats if ld.train else 1
    for b in batches[:3]:
        want = _pytorch_path(ld, b["index"], repeats)
        if not ld.train and want.shape[1] == 1:
            want = want[:, 0]
        assert b["video"].shape == want.shape and b["video"].dtype == torch.float32
        diff = (b["video"] - want).abs() / LEVEL
        assert diff.mean() < 0.02 and (diff > 1).float().mean() < 5e-3 and diff.max() < 16, (diff.max(), diff.mean())


def test_randaugment_in_the_graph_follows_the_drawn_ops(synth: Path) -> None:
    """RandAugment too: the ops, magnitudes and signs drawn in Python; where timm's draw picked bicubic, DALI warps
    bilinear (s4v/data/randaug.py), so a geometric op can move a few pixels by more than a level."""
    ld = _loader(_cfg(synth, randaugment="rand-m9-n2-mstd0.5-inc1", flip=True))
    b = next(iter(ld))
    diff = (b["video"] - _pytorch_path(ld, b["index"], 1)).abs() / LEVEL
    assert diff.mean() < 0.5 and (diff > 2).float().mean() < 0.02, (diff.mean(), (diff > 2).float().mean())
    off = next(iter(_loader(_cfg(synth, flip=True))))["video"]  # the same crops without RandAugment
    assert ((b["video"] - off).abs() / LEVEL > 2).float().mean() > 0.05  # the ops did change the clips


def test_a_resumed_dali_epoch_is_the_rest_of_the_full_one_bitwise(synth: Path) -> None:
    cfg = _cfg(synth, num_repeats=2, flip=True, grayscale=0.5, randaugment="rand-m7-n4-mstd0.5-inc1")
    full = list(_loader(cfg))
    ld = _loader(cfg)
    start = 3 * ld.videos_per_batch
    resumed = list(ld.iter_from(start))
    assert len(resumed) == len(full) - 3
    for a, b in zip(full[3:], resumed, strict=True):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["video"], b["video"])
    # On two ranks each video's clips are the ones it gets on one: a clip is a function of (seed, epoch, index).
    clips = {(i, k % 2): v for b in full for k, (i, v) in enumerate(zip(b["index"].tolist(), b["video"], strict=True))}
    for rank in (0, 1):
        two = build_loader(cfg, "train", rank, 2, SEED)
        two.set_epoch(EPOCH)
        for b in two:
            for k, (i, v) in enumerate(zip(b["index"].tolist(), b["video"], strict=True)):
                assert torch.equal(v, clips[(i, k % 2)])


def test_the_graph_works_ahead_of_the_training_loop(synth: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the loop asks for batch k, batch k has already been scheduled: its clips are made while the loop
    holds batch k - 1 (no timing involved: the order of the graph's calls is what is checked)."""
    ld = _loader(_cfg(synth))
    events: list[str] = []
    it = iter(ld)
    first = next(it)
    dali = ld._dali
    start, result = dali.start, dali.result
    monkeypatch.setattr(dali, "start", lambda preps: (events.append("start"), start(preps))[1])
    monkeypatch.setattr(dali, "result", lambda: (events.append("result"), result())[1])
    events.append("yield")
    for _ in range(3):
        next(it)
        events.append("yield")
    assert first["video"] is not None
    assert events[:7] == ["yield", "result", "start", "yield", "result", "start", "yield"]


def test_frames_whose_size_differs_from_the_streams_are_a_bad_video(synth: Path) -> None:
    ld = _loader(_cfg(synth, backend="pyav"))
    p = prepare(0, ld.records[0], ld.cfg, True, SEED, EPOCH)
    h, w = p.video.size
    with pytest.raises(Exception, match="stream declares"):
        finish(p, torch.zeros(len(p.frames), h + 2, w, 3, dtype=torch.uint8), ld.cfg, True)
    assert np.asarray(p.video.size).min() > 0
