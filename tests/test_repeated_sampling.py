"""Repeated sampling (`data.num_repeats`, paper Table 12): each training video decoded once, R clips with
their own spatial augmentation and the same frames, adjacent in the batch; R = 1 is the pipeline as before;
a run with R = 2 on the DALI graph, stopped and resumed, reproduces the uninterrupted one bitwise."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_train_resume import REPO, _cmd, _losses

from s4v.config import load_config
from s4v.core.errors import UserError
from s4v.data import DataConfig, build_loader
from s4v.data.config import CLIP_MEAN, CLIP_STD
from s4v.data.decode import decode_frames
from s4v.data.prepare import prepare
from s4v.data.sampling import clip_indices
from s4v.data.transforms import draw_params, train_transform
from s4v.memory.plan import Planner
from s4v.train.build import build_model
from s4v.train.metrics import flops_per_micro_batch

SEED, EPOCH = 3, 1
AUGMENT = dict(flip=True, randaugment="rand-m7-n4-mstd0.5-inc1", grayscale=0.5)  # every spatial draw in play


def _cfg(root: Path, **kw) -> DataConfig:
    base = dict(root=str(root), num_frames=4, image_size=32, batch_size=4, num_workers=0, backend="pyav")
    return DataConfig(**{**base, **kw})


def _batches(cfg: DataConfig, split: str = "train") -> list[dict]:
    ld = build_loader(cfg, split, seed=SEED)
    ld.set_epoch(EPOCH)
    return list(ld)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 frame-folder videos of 12 lossless PNG frames: red is uniform and encodes the frame index (10 t + 5,
    unchanged by crops, resizes and flips), green and blue are ramps that tell crops and flips apart."""
    root = tmp_path_factory.mktemp("indexed")
    y, x = np.mgrid[0:40, 0:48]
    for v in range(8):
        folder = root / f"v{v}"
        folder.mkdir()
        for t in range(12):
            frame = np.stack([np.full_like(x, 10 * t + 5), x * 5, y * 6], axis=-1).astype(np.uint8)
            Image.fromarray(frame).save(folder / f"{t:05d}.png")
    (root / "train.txt").write_text("".join(f"v{v} {v % 2}\n" for v in range(8)))
    (root / "val.txt").write_text("".join(f"v{v} {v % 2}\n" for v in range(8)))
    return root


def _frame_indices(clip: torch.Tensor) -> np.ndarray:
    """(T, 3, S, S) CLIP-normalised clip of `indexed` -> the source frame index of each of its frames."""
    red = (clip[:, 0] * CLIP_STD[0] + CLIP_MEAN[0]) * 255
    code = (red.mean(dim=(1, 2)).numpy() - 5) / 10
    assert np.abs(code - code.round()).max() < 1e-2  # red stayed uniform: a frame index, not a blend
    return code.round().astype(np.int64)


def test_clips_of_a_video_share_its_frames_and_differ_in_augmentation(indexed: Path) -> None:
    cfg = _cfg(indexed, flip=True, num_repeats=2)
    batches = _batches(cfg)
    assert len(batches) == 2  # 8 videos, batch 4: the batch size counts videos
    records = build_loader(cfg).records
    seen = []
    for b in batches:
        assert b["video"].shape == (8, 4, 3, 32, 32)
        index, label = b["index"], b["label"]
        assert torch.equal(index[0::2], index[1::2]) and torch.equal(label[0::2], label[1::2])  # video-major
        assert torch.equal(label, index % 2)
        for k, i in enumerate(index[0::2].tolist()):
            prepared = prepare(i, records[i], cfg, True, SEED, EPOCH).frames
            first, second = b["video"][2 * k], b["video"][2 * k + 1]
            assert (_frame_indices(first) == prepared).all() and (_frame_indices(second) == prepared).all()
            assert not torch.equal(first[:, 1:], second[:, 1:])  # own crop / flip: the ramps differ
        seen += index[0::2].tolist()
    assert sorted(seen) == list(range(8))
    # The first clip of each video is the clip R = 1 makes, bit for bit.
    single = _batches(_cfg(indexed, flip=True))
    for one, two in zip(single, batches, strict=True):
        assert torch.equal(one["video"], two["video"][0::2]) and torch.equal(one["index"], two["index"][0::2])
    # Validation ignores R: one entry per video, as with R = 1.
    for a, b in zip(_batches(cfg, "val"), _batches(_cfg(indexed, flip=True), "val"), strict=True):
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["index"], b["index"])
        assert a["video"].shape == (4, 4, 3, 32, 32)


def _expected(cfg: DataConfig, index: torch.Tensor, decode) -> torch.Tensor:
    """The batch of videos `index[::R]` rebuilt per video: one decode, one temporal draw, then R spatial draws
    in turn from the video's own generator."""
    ld = build_loader(cfg, seed=SEED)
    clips = []
    for i in index[:: cfg.num_repeats].tolist():
        p = prepare(i, ld.records[i], cfg, True, SEED, EPOCH)
        frames = decode(p)
        h, w = frames.shape[1:3]
        rng = np.random.default_rng([SEED, EPOCH, i])
        assert (clip_indices(p.video.frames, cfg.num_frames, cfg.sampling, cfg.dense_stride, rng) == p.frames).all()
        clips += [train_transform(frames, draw_params(rng, cfg, h, w), cfg) for _ in range(cfg.num_repeats)]
    return torch.stack(clips)


def _pyav(p) -> torch.Tensor:
    return torch.from_numpy(decode_frames(p.record.path, p.frames, p.data))


@pytest.mark.parametrize("repeats", [1, 2])
def test_batches_are_the_per_video_pipeline_bitwise(synth: Path, repeats: int) -> None:
    """R = 1: the pipeline as it was before repeated sampling (one draw, one clip per video)."""
    cfg = _cfg(synth, num_workers=1, num_repeats=repeats, **AUGMENT)
    batches = _batches(cfg)
    assert len(batches) == len(build_loader(cfg))
    for b in batches[:2]:
        assert b["video"].shape == (4 * repeats, 4, 3, 32, 32)
        assert torch.equal(b["video"], _expected(cfg, b["index"], _pyav))


def test_dali_path_repeats_the_same_way(synth: Path) -> None:
    """The DALI graph makes the R clips of a video from the same draws as the PyTorch path: the same frames,
    crops, flips, RandAugment ops and grayscale, so only the decoders' colour conversion and the two resize
    filters tell them apart; its clip 0 is what it makes with R = 1, bit for bit."""
    cfg = _cfg(synth, backend="dali", num_workers=1, num_repeats=2, **AUGMENT)
    dali = _batches(cfg)
    pyav = _batches(_cfg(synth, num_workers=0, num_repeats=2, **AUGMENT))
    single = _batches(_cfg(synth, backend="dali", num_workers=1, **AUGMENT))
    for d, a, s in zip(dali, pyav, single, strict=True):
        assert torch.equal(d["index"], a["index"]) and torch.equal(d["label"], a["label"])
        assert torch.equal(d["index"][0::2], d["index"][1::2])
        # same frames, same crops: the decoders' colour conversion and the filters differ (CLIP-normalised units)
        assert (d["video"] - a["video"]).abs().mean() < 0.08
        assert torch.equal(d["video"][0::2], s["video"])


def test_num_repeats_is_checked_when_the_config_loads() -> None:
    assert load_config(None, []).data.num_repeats == 1
    assert load_config(None, ["data.num_repeats=2"]).data.num_repeats == 2
    with pytest.raises(UserError, match=r"^data\.num_repeats: 0 is not a positive count of clips per training video$"):
        load_config(None, ["data.num_repeats=0"])
    with pytest.raises(UserError, match=r"^data\.num_repeats: expected int"):
        load_config(None, ["data.num_repeats=1.5"])
    with pytest.raises(UserError, match=r"^data\.num_repeats: 2 applies to recognition only"):
        load_config(None, ["model.task=retrieval", "model.preset=tiny-retrieval", "data.num_repeats=2"])
    for path in sorted((REPO / "configs").glob("*.yaml")):  # Table 12: 2 on SSv1/SSv2, 1 on K400
        want = 2 if path.name.startswith(("ssv1_", "ssv2_")) else 1
        assert load_config(path).data.num_repeats == want, path.name


def test_flops_and_memory_plan_count_clips() -> None:
    def flops(*overrides: str) -> float:
        cfg = load_config(None, list(overrides))
        return flops_per_micro_batch(cfg, lambda device: build_model(cfg, 5, device))

    assert flops("data.batch_size=2", "data.num_repeats=2") == flops("data.batch_size=4")
    kwargs = dict(backbone="tiny", budget_gib=0.05, frames=8, precision="fp32", attention="flash", num_classes=174)
    assert Planner(**kwargs, repeats=2).spec(2, 64, 3).batch == 6  # 3 videos: 6 clips accounted
    clips = Planner(**kwargs).fit(2, 64).max_batch
    videos = Planner(**kwargs, repeats=2).fit(2, 64).max_batch
    assert videos == clips // 2 >= 1


def test_stopped_and_resumed_dali_run_with_repeats_is_bitwise(synth: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # On the DALI graph (CPU backend) with the SSv2 recipe's RandAugment: every draw is fed from Python.
    extra = ("data.num_repeats=2", "optim.epochs=1", "data.backend=dali", f"data.randaugment={AUGMENT['randaugment']}")
    ref, stopped = tmp_path / "ref", tmp_path / "stopped"
    logs = {out: tmp_path / f"{out.name}.log" for out in (ref, stopped)}
    # The two first runs are independent: side by side, they take the time of one.
    runs = {}
    for out, more in ((ref, ()), (stopped, ("train.max_steps=4",))):
        with logs[out].open("w") as log:
            runs[out] = subprocess.Popen(_cmd(synth, out, *extra, *more), cwd=REPO, env=env, stdout=log, stderr=log)
    for out, proc in runs.items():
        assert proc.wait() == 0, logs[out].read_text()[-3000:]
    reference = _losses(ref)
    assert len(reference) == 10  # 40 train videos / 4 per batch; the batch size counts videos
    assert len(_losses(stopped)) == 4
    latest = (stopped / "checkpoints" / "latest").read_text()
    saved = yaml.safe_load((stopped / "checkpoints" / latest / "config.yaml").read_text())
    assert saved["data"]["num_repeats"] == 2
    subprocess.run(_cmd(synth, stopped, *extra, "--resume"), check=True, cwd=REPO, env=env, capture_output=True)
    assert _losses(stopped) == reference  # exact float equality: losses and learning rates, every step
    final_ref = torch.load(ref / "final" / "trainable.pt")
    final_res = torch.load(stopped / "final" / "trainable.pt")
    assert all(torch.equal(final_ref[k], final_res[k]) for k in final_ref)
    rows = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    assert all(abs(r["clips_per_s"] * r["step_s"] - 8) < 1e-6 for r in rows)  # 4 videos x 2 clips per step
