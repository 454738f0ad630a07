"""The data contract: shards, deterministic order, exact resume, views, augmentation, bad videos."""

import logging
import shutil

import numpy as np
import pytest
import torch

from s4v.data import DataConfig, build_loader
from s4v.data.config import CLIP_MEAN
from s4v.data.loader import BadVideoError
from s4v.data.synth import generate
from s4v.data.transforms import draw_params, normalize, train_transform


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, num_classes=4, videos_per_class=8, val_fraction=0.25, frames=16, size=32)
    return root


def _cfg(root, **kw):
    base = dict(root=str(root), num_frames=4, image_size=32, batch_size=4, num_workers=0, backend="pyav")
    return DataConfig(**{**base, **kw})


def _list_dataset(tmp_path, n):
    (tmp_path / "train.txt").write_text("".join(f"v{i}.webm {i % 3}\n" for i in range(n)))
    (tmp_path / "val.txt").write_text("".join(f"v{i}.webm {i % 3}\n" for i in range(n)))
    return tmp_path


@pytest.mark.parametrize("n, world", [(103, 2), (40, 4), (17, 3)])
def test_shards_are_disjoint_and_cover_the_set(tmp_path, n, world):
    root = _list_dataset(tmp_path, n)
    for epoch in (0, 1):
        train, val = [], []
        for rank in range(world):
            ld = build_loader(_cfg(root, batch_size=2), "train", rank, world, seed=5)
            ld.set_epoch(epoch)
            train.append(np.concatenate(ld.batches()))
            val.append(np.concatenate(build_loader(_cfg(root, batch_size=2), "val", rank, world).batches()))
        flat_train, flat_val = np.concatenate(train), np.concatenate(val)
        assert len(set(flat_train.tolist())) == len(flat_train)  # disjoint
        assert len({len(s) for s in train}) == 1 and len(flat_train) == n - n % (2 * world)  # equal steps per rank
        assert sorted(flat_val.tolist()) == list(range(n))  # val: disjoint and complete
    ld = build_loader(_cfg(root, batch_size=2), "train", 0, world, seed=5)
    orders = []
    for epoch in (0, 1, 0):
        ld.set_epoch(epoch)
        orders.append(ld.order().tolist())
    assert orders[0] == orders[2] != orders[1]  # deterministic per (seed, epoch), reshuffled per epoch


def test_batch_shapes_labels_and_normalisation(synth):
    ld = build_loader(_cfg(synth), "train")
    assert ld.num_classes == 4 and len(ld) == 24 // 4
    batches = list(ld)
    assert len(batches) == len(ld)
    b = batches[0]
    assert b["video"].shape == (4, 4, 3, 32, 32) and b["video"].dtype == torch.float32
    assert b["label"].dtype == torch.long and b["label"].shape == (4,)
    labels = {int(i): int(lb) for b in batches for i, lb in zip(b["index"], b["label"], strict=True)}
    for i, lb in labels.items():
        assert lb == int(ld.records[i].label)
    assert -2.5 < float(b["video"].min()) and float(b["video"].max()) < 2.5  # CLIP-normalised range


def test_resume_reproduces_the_remaining_batches_exactly(synth):
    for backend, workers in (("pyav", 2), ("dali", 1)):
        ld = build_loader(_cfg(synth, backend=backend, num_workers=workers), "train", seed=3)
        ld.set_epoch(2)
        full = list(ld)
        ld.set_epoch(2)
        resumed = list(ld.iter_from(4 * ld.videos_per_batch))
        assert len(resumed) == len(full) - 4
        for a, b in zip(full[4:], resumed, strict=True):
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["video"], b["video"])


def test_batches_do_not_depend_on_worker_count_or_decoder(synth):
    runs = {}
    for backend, workers in (("pyav", 0), ("pyav", 2), ("dali", 2)):
        ld = build_loader(_cfg(synth, backend=backend, num_workers=workers), "train", seed=1)
        runs[backend, workers] = list(ld)
    for a, b in zip(runs["pyav", 0], runs["pyav", 2], strict=True):
        assert torch.equal(a["video"], b["video"])
    for a, b in zip(runs["pyav", 0], runs["dali", 2], strict=True):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["label"], b["label"])
        # same frames, same crops: only the decoders' colour conversion differs (CLIP-normalised units)
        assert (a["video"] - b["video"]).abs().mean() < 0.08


def test_test_views_layout(synth):
    ld = build_loader(_cfg(synth, test_crops=3, test_clips=2, batch_size=3), "val")
    assert len(ld) == 3  # 8 val videos, batch 3, last batch kept
    batches = list(ld)
    assert [b["video"].shape for b in batches] == [(3, 6, 4, 3, 32, 32)] * 2 + [(2, 6, 4, 3, 32, 32)]
    assert sorted(i for b in batches for i in b["index"].tolist()) == list(range(8))
    v = batches[0]["video"][0]
    assert not torch.equal(v[0], v[3])  # clip 0 vs clip 1 of the same crop: different frames
    single = next(iter(build_loader(_cfg(synth), "val")))
    assert single["video"].shape == (4, 4, 3, 32, 32)
    # square frames: the 3 crops of a clip coincide with the centre crop
    assert torch.allclose(v[0], v[1]) and torch.allclose(v[1], v[2])


def test_flip_defaults_to_off_except_for_kinetics(synth):
    assert not _cfg(synth).use_flip and _cfg(synth, fmt="k400").use_flip and _cfg(synth, flip=True).use_flip
    rng = np.random.default_rng(0)
    assert not any(draw_params(rng, _cfg(synth), 32, 32).flip for _ in range(100))
    assert any(draw_params(rng, _cfg(synth, flip=True), 32, 32).flip for _ in range(100))


def test_augmentations_apply_one_op_to_every_frame(synth):
    frame = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 40, 48, 3), dtype=np.uint8))
    clip = frame.expand(4, -1, -1, -1).contiguous()
    cfg = _cfg(synth, randaugment="rand-m7-n4-mstd0.5-inc1", grayscale=1.0, flip=True)
    for s in range(5):
        p = draw_params(np.random.default_rng(s), cfg, 40, 48)
        out = train_transform(clip, p, cfg)
        assert out.shape == (4, 3, 32, 32)
        assert all(torch.equal(out[0], out[t]) for t in range(4))
        assert torch.allclose(out[:, 0] * 0.26862954 + 0.48145466, out[:, 1] * 0.26130258 + 0.4578275, atol=1e-5)
    mean_frame = torch.tensor(CLIP_MEAN).view(3, 1, 1) * 255 * torch.ones(3, 4, 4)
    assert normalize(mean_frame).abs().max() < 1e-5


def test_bad_videos_are_skipped_reported_and_limited(synth, tmp_path, caplog):
    root = tmp_path / "ds"
    shutil.copytree(synth, root)
    good = (root / "0.webm").read_bytes()
    (root / "2.webm").unlink()  # missing
    (root / "3.webm").write_bytes(b"")  # empty
    (root / "4.webm").write_bytes(good[: len(good) // 2])  # truncated
    (root / "5.webm").write_bytes(b"\x1aE\xdf\xa3" + bytes(range(256)) * 8)  # corrupt (webm magic, junk)
    bad = {str(root / f"{i}.webm") for i in (2, 3, 4, 5)}
    for backend, workers in (("pyav", 2), ("dali", 1)):
        ld = build_loader(_cfg(root, backend=backend, num_workers=workers), "train")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="s4v.data"):
            batches = list(ld)
        assert {p for p, _ in ld.bad_videos} == bad
        kinds = {p.split("/")[-1]: r for p, r in ld.bad_videos}
        assert kinds["2.webm"] == "missing file" and kinds["3.webm"] == "empty file"
        assert kinds["4.webm"].startswith("truncated") and kinds["5.webm"].startswith("corrupt")
        seen = [i for b in batches for i in b["index"].tolist()]
        assert len(seen) + 4 == 4 * len(ld)  # nothing substituted: batches just shrink
        assert not {str(ld.records[i].path) for i in seen} & bad
        for path in bad:
            assert any(path in r.getMessage() for r in caplog.records)
        assert any("skipped 4 bad video(s)" in r.getMessage() for r in caplog.records)
        limited = build_loader(_cfg(root, backend=backend, num_workers=workers, max_bad_videos=2), "train")
        with pytest.raises(BadVideoError, match="max_bad_videos=2") as err:
            list(limited)
        assert sum(path in str(err.value) for path in bad) == 3


def test_too_small_split_is_a_clear_error(tmp_path):
    root = _list_dataset(tmp_path, 3)
    with pytest.raises(ValueError, match="no full batch"):
        build_loader(_cfg(root, batch_size=4), "train")


def test_batch_dali_rejects_is_decoded_by_pyav_instead(synth, tmp_path, caplog):
    """A video that probes fine but that DALI's CPU decoder refuses (here H.264) does not kill the run."""
    import av

    root = tmp_path / "mixed"
    shutil.copytree(synth, root)
    frames = np.zeros((16, 32, 32, 3), np.uint8)
    frames[:, 8:24, 8:24] = 200
    with av.open(str(root / "7.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    lines = (root / "train.txt").read_text().splitlines()
    (root / "train.txt").write_text("".join(("7.mp4 0" if ln == "7.webm 0" else ln) + "\n" for ln in lines))
    ld = build_loader(_cfg(root, backend="dali", num_workers=1), "train")
    with caplog.at_level(logging.WARNING, logger="s4v.data"):
        batches = list(ld)
    assert ld.bad_videos == [] and sum(len(b["index"]) for b in batches) == 24
    assert any("making it with PyAV" in r.getMessage() for r in caplog.records)
