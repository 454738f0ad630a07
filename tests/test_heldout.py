"""The held-out carve (`data.heldout_fraction` / `data.heldout_list`): the same videos at every world size and
seed, none of them in a training batch, the "heldout" split covering them once, and no change without it."""

import logging
import random

import numpy as np
import pytest
import torch

from s4v.config import check_paths, load_config
from s4v.core.errors import UserError
from s4v.data import DataConfig, build_loader
from s4v.data.annotations import read_split
from s4v.data.heldout import heldout_summary
from s4v.data.synth import generate


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """4 classes x 6 training videos (and 2 val videos each) of 8 frames."""
    root = tmp_path_factory.mktemp("synth")
    generate(root, num_classes=4, videos_per_class=8, val_fraction=0.25, frames=8, size=32, captions=True)
    return root


def _cfg(root, **kw):
    base = dict(root=str(root), num_frames=4, image_size=32, batch_size=2, num_workers=0, backend="pyav")
    return DataConfig(**{**base, **kw})


def _list_dataset(root, per_class, shuffle_seed=None):
    """A train list of `per_class[c]` videos of class c (files need not exist: index-level tests only)."""
    root.mkdir(exist_ok=True)
    lines = [f"c{c}/v{i}.webm {c}\n" for c, n in enumerate(per_class) for i in range(n)]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(lines)
    (root / "train.txt").write_text("".join(lines))
    (root / "val.txt").write_text("".join(lines[:4]))
    (root / "classes.txt").write_text("".join(f"class{c}\n" for c in range(len(per_class))))
    return root


def _trained_paths(ld, epochs=(0, 1)):
    """Paths of every video of this rank's training batches over `epochs` (index level, nothing decoded)."""
    paths = []
    for epoch in epochs:
        ld.set_epoch(epoch)
        paths += [ld.records[i].path for b in ld.batches() for i in b]
    return paths


def test_carve_is_the_same_at_every_world_size_and_seed(tmp_path):
    root = _list_dataset(tmp_path / "a", [10, 7, 3, 2, 1])
    seen = set()
    for world, seed in [(1, 0), (2, 0), (2, 11), (3, 11)]:
        for rank in range(world):
            train = build_loader(_cfg(root, heldout_fraction=0.2), "train", rank, world, seed)
            held = build_loader(_cfg(root, heldout_fraction=0.2), "heldout", rank, world, seed)
            assert [r.path for r in held.records] == [r.path for r in train.heldout]
            seen.add((tuple(r.path for r in train.heldout), tuple(heldout_summary(train).items())))
            assert heldout_summary(held) == heldout_summary(train)
    assert len(seen) == 1
    ((held, summary),) = seen
    # Stratified: floor(0.2 n + 1/2) of each class, at least one of a class of two, none of a single video.
    assert [sum(p.split("/")[-2] == f"c{c}" for p in held) for c in range(5)] == [2, 1, 1, 1, 0]
    assert dict(summary)["videos"] == 5 and len(dict(summary)["sha256"]) == 12
    # Moving the dataset and reordering its annotation keep the held-out videos (and the fingerprint).
    moved = build_loader(_cfg(_list_dataset(tmp_path / "b", [10, 7, 3, 2, 1], 5), heldout_fraction=0.2), "train")
    assert heldout_summary(moved) == dict(summary)
    other = build_loader(_cfg(root, heldout_fraction=0.3), "train")
    assert heldout_summary(other)["sha256"] != dict(summary)["sha256"]


@pytest.mark.parametrize("world", [1, 2])
def test_heldout_videos_never_reach_a_training_batch(synth, world):
    cfg = _cfg(synth, heldout_fraction=0.25)
    annotated = {r.path for r in read_split(cfg, "train").records}
    trained, heldout = [], None
    for rank in range(world):
        ld = build_loader(cfg, "train", rank, world, seed=1)
        heldout = {r.path for r in ld.heldout}
        assert len(ld.records) == 16 and len(ld) == 16 // (2 * world)  # 2 of each class of 6 held out
        for epoch in (0, 1):
            ld.set_epoch(epoch)
            batches = list(ld)  # decoded: what the model would see
            assert len(batches) == len(ld)
            trained += [ld.records[i].path for b in batches for i in b["index"].tolist()]
            # resume positions count videos of the carved order
            assert [b.tolist() for b in ld.batches(2 * ld.videos_per_batch)] == [b.tolist() for b in ld.batches()[2:]]
    assert len(heldout) == 8 and not heldout & set(trained)
    assert set(trained) | heldout == annotated and len(trained) == 2 * 16  # every other video, once an epoch


def test_heldout_split_covers_the_set_once_at_two_ranks(synth):
    cfg = _cfg(synth, heldout_fraction=0.25, batch_size=3, test_clips=2)
    labels = {r.path: r.label for r in read_split(cfg, "train").records}
    got = []
    for rank in (0, 1):
        ld = build_loader(cfg, "heldout", rank, 2, seed=rank)
        assert len(ld) == 2  # 4 videos a rank, batch 3, last batch kept
        for b in ld:
            assert b["video"].shape[1:] == (2, 4, 3, 32, 32)  # test views, as val
            got += [(ld.records[i].path, lb) for i, lb in zip(b["index"].tolist(), b["label"].tolist(), strict=True)]
    held = build_loader(cfg, "train").heldout
    assert sorted(got) == sorted((r.path, r.label) for r in held)
    assert all(labels[p] == lb for p, lb in got)  # the annotation's labels


def test_fraction_zero_trains_on_the_split_as_before(synth):
    plain, zero = _cfg(synth), _cfg(synth, heldout_fraction=0.0, heldout_list=None)
    a, b = build_loader(plain, "train", seed=2), build_loader(zero, "train", seed=2)
    assert a.records == b.records == read_split(plain, "train").records and len(a.records) == 24
    assert a.heldout is None and heldout_summary(a) is None
    for epoch in (0, 1):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        # today's order: one permutation of the whole split per (seed, epoch)
        assert a.order().tolist() == np.random.default_rng([2, epoch]).permutation(24).tolist()
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x["index"], y["index"]) and torch.equal(x["video"], y["video"])
    with pytest.raises(UserError, match="nothing is held out"):
        build_loader(zero, "heldout")


def test_explicit_list(tmp_path, caplog):
    root = _list_dataset(tmp_path / "ds", [6, 6, 6])
    records = read_split(_cfg(root), "train").records
    listed = tmp_path / "heldout.txt"
    # A path as the annotation names it, one as the loader spells it, and one of no train video.
    listed.write_text(f"# selection set\nc1/v2.webm\n{records[14].path}\n\nc9/v0.webm\n")
    cfg = _cfg(root, heldout_list=str(listed))
    with caplog.at_level(logging.WARNING, logger="s4v.data"):
        train = build_loader(cfg, "train", 0, 2, seed=3)
    assert [r.path for r in train.heldout] == [records[8].path, records[14].path]  # file order
    assert any("1 entries name no train split video, e.g. c9/v0.webm" in r.getMessage() for r in caplog.records)
    trained = [p for rank in (0, 1) for p in _trained_paths(build_loader(cfg, "train", rank, 2, seed=3))]
    assert not {records[8].path, records[14].path} & set(trained)
    held = build_loader(cfg, "heldout", 1, 2)
    assert [(r.path, r.label) for r in held.records] == [(records[8].path, 1), (records[14].path, 2)]
    assert heldout_summary(held) | {"sha256": None} == {
        "fraction": 0.0,
        "list": str(listed),
        "videos": 2,
        "sha256": None,
    }
    listed.write_text("c9/v0.webm\n")
    with pytest.raises(UserError, match=r"^data.heldout_list: none of the 1 entries"):
        build_loader(cfg, "train")


def test_retrieval_carve_renumbers_the_videos_and_keeps_their_captions(synth):
    cfg = _cfg(synth, fmt="msrvtt", train_list="captions_train.csv", class_file="captions.json", heldout_fraction=0.25)
    whole = read_split(cfg, "train")
    train, held = build_loader(cfg, "train"), build_loader(cfg, "heldout")
    assert len(held.records) == 6 and len(train.records) == 18  # one stratum: floor(0.25 x 24 + 1/2)
    for part in (train, held):
        assert [r.label for r in part.records] == list(range(len(part.records)))  # each video its own class
        assert part.captions.video_ids == part.classes
        for r, caps in zip(part.records, part.captions.captions, strict=True):
            assert caps == whole.captions.captions[[w.path for w in whole.records].index(r.path)]
    assert not {r.path for r in held.records} & {r.path for r in train.records}


@pytest.mark.parametrize(
    "overrides",
    [
        ["data.heldout_fraction=1.0"],
        ["data.heldout_fraction=-0.1"],
        ["data.heldout_fraction=0.1", "data.heldout_list=heldout.txt"],
    ],
)
def test_bad_values_are_refused_in_one_line(tmp_path, overrides):
    with pytest.raises(UserError) as err:
        load_config(None, overrides)
    assert str(err.value).startswith("data.heldout_fraction: ") and "\n" not in str(err.value)
    with pytest.raises(UserError, match="^data.heldout_fraction: "):  # Python callers, past the config loader
        build_loader(_cfg(_list_dataset(tmp_path, [4, 4]), heldout_fraction=1.5), "train")
    missing = load_config(None, [f"data.root={tmp_path}", f"data.heldout_list={tmp_path / 'none.txt'}"])
    with pytest.raises(UserError, match="^data.heldout_list: .* is not a file$"):
        check_paths(missing)


def test_skip_list_applies_after_the_carve(tmp_path):
    root = _list_dataset(tmp_path / "ds", [6, 6])
    carved = build_loader(_cfg(root, heldout_fraction=0.34), "train")
    held = [r.path for r in carved.heldout]
    trained = [r.path for r in carved.records]
    skip = tmp_path / "skip.txt"
    skip.write_text(f"{held[0]}\n{trained[0]}\n")
    cfg = _cfg(root, heldout_fraction=0.34, skip_list=str(skip))
    ld = build_loader(cfg, "train")
    # The skipped videos leave their side; no other video changes side (the carve ignores the skip list).
    assert [r.path for r in ld.heldout] == held[1:] and [r.path for r in ld.records] == trained[1:]
    assert [r.path for r in build_loader(cfg, "heldout").records] == held[1:]
    skip.write_text("".join(f"{p}\n" for p in held))
    with pytest.raises(UserError, match="every held-out video is in data.skip_list"):
        build_loader(cfg, "heldout")
