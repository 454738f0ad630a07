"""Synthetic dataset: determinism, documented motion directions, time-reversal pairs, files, speed."""

import json
import time
from pathlib import Path

import numpy as np
import pytest

from s4v.data.synth import PAIRS, class_names, cli, generate, make_video, render, sample_motion


def _centroid(frames: np.ndarray) -> np.ndarray:
    """(F, 2) x, y centroid of pixels brighter than the background, per frame."""
    w = frames.astype(float).sum(-1)
    w = w - np.median(w.reshape(len(w), -1), axis=1)[:, None, None]
    w = np.clip(w, 0, None)
    ys, xs = np.mgrid[: w.shape[1], : w.shape[2]]
    total = w.sum((1, 2))
    return np.stack([(w * xs).sum((1, 2)) / total, (w * ys).sum((1, 2)) / total], 1)


@pytest.mark.parametrize("label", range(10))
def test_odd_class_is_even_class_played_backwards(label):
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    video, _ = make_video(label, rng_a, 12, 32)
    partner, _ = make_video(label ^ 1, rng_b, 12, 32)
    np.testing.assert_array_equal(video, partner[::-1])
    assert not np.array_equal(video, video[::-1])  # the motion is visible, so order matters


def test_forward_motions_go_the_documented_way():
    rng = np.random.default_rng(0)
    for _ in range(5):
        c = _centroid(render(sample_motion("translate_x", rng, 16, 64), 64))
        assert c[-1, 0] - c[0, 0] > 10  # "moving right": x grows
        c = _centroid(render(sample_motion("translate_y", rng, 16, 64), 64))
        assert c[-1, 1] - c[0, 1] > 10  # "moving down": image y grows
        m = sample_motion("scale", rng, 16, 64)
        area = (render(m, 64).astype(int) != np.asarray(m.background)).any(-1).sum((1, 2))
        assert area[-1] > 3 * area[0]  # "approaching": grows
        m = sample_motion("fade", rng, 16, 64)
        assert np.abs(render(m, 64)[0].astype(int) - m.background).max() <= 1  # "appearing": starts empty
    # "rotating counter-clockwise" on screen: the off-centre mass of the cross turns from +x towards -y.
    m = sample_motion("rotate", np.random.default_rng(1), 16, 64)
    m = type(m)(m.cx, m.cy, m.radius, np.linspace(0, np.pi / 2, 16), m.alpha, "cross", "red", (0, 0, 0))
    c = _centroid(render(m, 64)) - np.stack([m.cx, m.cy], 1)
    angle = np.unwrap(np.arctan2(-c[:, 1], c[:, 0]))  # counter-clockwise angle on screen (y points down)
    assert abs(angle[0]) < 0.4 and abs(angle[-1] - np.pi / 2) < 0.4 and (np.diff(angle) > -0.1).all()


def test_deterministic_per_seed(tmp_path):
    kw = dict(num_classes=4, videos_per_class=3, frames=8, size=32)
    generate(tmp_path / "a", seed=3, **kw)
    generate(tmp_path / "b", seed=3, **kw)
    generate(tmp_path / "c", seed=4, **kw)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "0.webm").read_bytes() != (tmp_path / "c" / "0.webm").read_bytes()


def test_default_set_files_size_and_speed(tmp_path):
    t0 = time.perf_counter()
    assert cli(["--out", str(tmp_path), "--captions"]) == 0
    elapsed = time.perf_counter() - t0
    assert elapsed < 60, elapsed
    names = (tmp_path / "classes.txt").read_text().split("\n")[:-1]
    assert names == class_names(8) and len(set(names)) == 8
    train = (tmp_path / "train.txt").read_text().splitlines()
    val = (tmp_path / "val.txt").read_text().splitlines()
    assert len(train) == 8 * 48 and len(val) == 8 * 12
    assert not {line.split()[0] for line in train} & {line.split()[0] for line in val}
    assert sorted(int(line.split()[1]) for line in val) == sorted(list(range(8)) * 12)
    mib = sum(p.stat().st_size for p in tmp_path.iterdir()) / 2**20
    assert mib < 8, mib
    labels = json.loads((tmp_path / "something-something-v2-labels.json").read_text())
    ssv2_val = json.loads((tmp_path / "something-something-v2-validation.json").read_text())
    assert len(ssv2_val) == len(val) and all(labels[e["template"]] for e in ssv2_val)
    caps = json.loads((tmp_path / "captions.json").read_text())
    assert len(caps["videos"]) == 480 and len(caps["sentences"]) == 960
    first = caps["sentences"][0]["caption"]
    assert any(c in first for c in ("red", "green", "blue", "yellow", "magenta", "cyan", "white", "orange"))
    from s4v.data.captions import load_caption_split

    train = load_caption_split("msrvtt", tmp_path, "captions_train.csv", "captions.json")
    test = load_caption_split("msrvtt", tmp_path, "captions_test.csv", "captions.json")
    assert len(train.records) == 8 * 48 and all(len(c) == 2 for c in train.captions)
    assert len(test.records) == 8 * 12 and all(len(c) == 1 for c in test.captions)
    assert all(Path(r.path).is_file() for r in train.records + test.records)


def test_rejects_unpaired_class_count():
    with pytest.raises(ValueError, match="even"):
        class_names(3)
    with pytest.raises(ValueError):
        class_names(2 * len(PAIRS) + 2)
