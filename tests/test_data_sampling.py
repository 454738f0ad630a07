"""Documented frame indices of segment / dense sampling, and the annotation formats."""

import json

import numpy as np
import pytest

from s4v.data.annotations import AnnotationError, read_split
from s4v.data.config import DataConfig
from s4v.data.sampling import clip_indices, dense_indices, segment_indices


def test_segment_test_clip_takes_each_segment_middle():
    np.testing.assert_array_equal(segment_indices(16, 8), [1, 3, 5, 7, 9, 11, 13, 15])
    # L = 30 / 8 = 3.75: floor(3.75 * (i + 0.5))
    np.testing.assert_array_equal(segment_indices(30, 8), [1, 5, 9, 13, 16, 20, 24, 28])
    # two clips: offsets 1/4 and 3/4 of each segment of L = 4
    np.testing.assert_array_equal(segment_indices(32, 8, clip=0, num_clips=2), np.arange(8) * 4 + 1)
    np.testing.assert_array_equal(segment_indices(32, 8, clip=1, num_clips=2), np.arange(8) * 4 + 3)


def test_segment_train_draws_one_frame_inside_each_segment():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        idx = segment_indices(50, 8, rng)
        # segment i is the real interval [6.25 i, 6.25 (i + 1)); its frames are floor() of it
        lo, hi = np.floor(np.arange(8) * 6.25), np.ceil(np.arange(1, 9) * 6.25)
        assert ((idx >= lo) & (idx < hi)).all() and (np.diff(idx) >= 0).all(), idx
        seen.update(idx.tolist())
    assert len(seen) == 50  # every frame can be drawn


def test_segment_on_short_video_repeats_frames_in_order():
    idx = segment_indices(3, 8)
    np.testing.assert_array_equal(idx, [0, 0, 0, 1, 1, 2, 2, 2])
    assert (segment_indices(3, 8, np.random.default_rng(1)) <= 2).all()


def test_dense_indices():
    # span = 7 * 4 + 1 = 29; room = 71; one centred clip starts at 35
    np.testing.assert_array_equal(dense_indices(100, 8, 4), 35 + 4 * np.arange(8))
    starts = [dense_indices(100, 8, 4, clip=k, num_clips=3)[0] for k in range(3)]
    assert starts == [0, 36, 71]
    rng = np.random.default_rng(0)
    train_starts = {int(dense_indices(100, 8, 4, rng)[0]) for _ in range(2000)}
    assert train_starts == set(range(72))
    np.testing.assert_array_equal(dense_indices(10, 4, 4), [0, 4, 8, 9])  # clamped to the last frame


def test_clip_indices_dispatch_and_errors():
    np.testing.assert_array_equal(clip_indices(16, 8, "segment"), segment_indices(16, 8))
    np.testing.assert_array_equal(clip_indices(100, 8, "dense", 4), dense_indices(100, 8, 4))
    with pytest.raises(ValueError):
        clip_indices(0, 8, "segment")
    with pytest.raises(ValueError):
        clip_indices(10, 8, "random")


def test_generic_list_and_malformed_line(tmp_path):
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    (tmp_path / "train.txt").write_text("x.webm 0\nsub/y.webm 40 2\n\n")
    split = read_split(DataConfig(root=str(tmp_path)), "train")
    recs, names = split.records, split.classes
    assert names == ["a", "b", "c"]
    assert [(r.path, r.label) for r in recs] == [(str(tmp_path / "x.webm"), 0), (str(tmp_path / "sub/y.webm"), 2)]
    (tmp_path / "val.txt").write_text("x.webm 0\ny.webm two\n")
    with pytest.raises(AnnotationError, match=r"val\.txt:2:"):
        read_split(DataConfig(root=str(tmp_path)), "val")
    (tmp_path / "val.txt").write_text("x.webm 3\n")
    with pytest.raises(AnnotationError, match="number of classes 3"):
        read_split(DataConfig(root=str(tmp_path)), "val")
    with pytest.raises(AnnotationError, match="missing.txt"):
        read_split(DataConfig(root=str(tmp_path), val_list="missing.txt"), "val")


def test_ssv2_json(tmp_path):
    labels = {"Moving something up": "1", "Pushing something from left to right": "0"}
    (tmp_path / "something-something-v2-labels.json").write_text(json.dumps(labels))
    entries = [
        {"id": "74225", "label": "moving a cup up", "template": "Moving [something] up", "placeholders": ["cup"]},
        {"id": "3", "label": "...", "template": "Pushing [something] from left to right", "placeholders": []},
    ]
    (tmp_path / "train.json").write_text(json.dumps(entries))
    split = read_split(DataConfig(root=str(tmp_path), fmt="ssv2", train_list="train.json"), "train")
    recs, names = split.records, split.classes
    assert names == ["Pushing something from left to right", "Moving something up"]
    assert [(r.path, r.label) for r in recs] == [(str(tmp_path / "74225.webm"), 1), (str(tmp_path / "3.webm"), 0)]
    (tmp_path / "bad.json").write_text(json.dumps([{"id": "1", "template": "Unknown [something]"}]))
    with pytest.raises(AnnotationError, match=r"bad\.json: entry 0"):
        read_split(DataConfig(root=str(tmp_path), fmt="ssv2", val_list="bad.json"), "val")
    (tmp_path / "broken.json").write_text('[\n{"id": 1,\n')
    with pytest.raises(AnnotationError, match=r"broken\.json:\d+: invalid json"):
        read_split(DataConfig(root=str(tmp_path), fmt="ssv2", val_list="broken.json"), "val")


def test_ssv1_csv(tmp_path):
    (tmp_path / "something-something-v1-labels.csv").write_text("Holding something\nDropping something\n")
    (tmp_path / "train.csv").write_text("100218;Dropping something\n48032;Holding something\n")
    split = read_split(DataConfig(root=str(tmp_path), fmt="ssv1", train_list="train.csv"), "train")
    recs, names = split.records, split.classes
    assert names == ["Holding something", "Dropping something"]
    assert [(r.path, r.label) for r in recs] == [(str(tmp_path / "100218"), 1), (str(tmp_path / "48032"), 0)]
    (tmp_path / "val.csv").write_text("1;Holding something\n2;Throwing something\n")
    with pytest.raises(AnnotationError, match=r"val\.csv:2:"):
        read_split(DataConfig(root=str(tmp_path), fmt="ssv1", val_list="val.csv"), "val")


def test_kinetics_csv(tmp_path):
    head = "label,youtube_id,time_start,time_end,split\n"
    (tmp_path / "train.csv").write_text(head + "zumba,abc,10,20,train\nabseiling,xyz,0,10,train\n")
    (tmp_path / "val.csv").write_text(head + "zumba,q1,5,15,val\n")
    (tmp_path / "zumba").mkdir()  # the downloader's per-class folders, used when present
    cfg = DataConfig(root=str(tmp_path), fmt="k400", train_list="train.csv", val_list="val.csv")
    split = read_split(cfg, "val")
    recs, names = split.records, split.classes
    assert names == ["abseiling", "zumba"]
    assert [(r.path, r.label) for r in recs] == [(str(tmp_path / "zumba" / "q1_000005_000015.mp4"), 1)]
    recs = read_split(cfg, "train").records
    assert recs[1].path == str(tmp_path / "xyz_000000_000010.mp4")
    (tmp_path / "val.csv").write_text(head + "zumba,q1,5,15,val\nzumba,q2,five,15,val\n")
    with pytest.raises(AnnotationError, match=r"val\.csv:3:"):
        read_split(cfg, "val")
    (tmp_path / "val.csv").write_text("label,id\nzumba,q1\n")
    with pytest.raises(AnnotationError, match=r"val\.csv:1: missing columns"):
        read_split(cfg, "val")
