"""`s4v data check` names every bad video with its exact reason and no good one, and its skip list, fed to
`data.skip_list`, leaves the loader with no bad video; the loader's bad videos are the check's."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from s4v.cli import main
from s4v.core.errors import UserError
from s4v.data.annotations import read_split
from s4v.data.config import DataConfig
from s4v.data.synth import encode_vp9, generate

FRAMES, SIZE = 8, 32


def _frames(n: int) -> np.ndarray:
    return (np.arange(n)[:, None, None, None] * 20 + np.zeros((n, SIZE, SIZE, 3))).astype(np.uint8)


def _mjpeg_mkv(good: int, garbage: int) -> bytes:
    """MJPEG in Matroska: `good` real frames, then `garbage` packets of random bytes."""
    buf, rng = io.BytesIO(), np.random.default_rng(1)
    with av.open(buf, "w", format="matroska") as c:
        s = c.add_stream("mjpeg", rate=8)
        s.width, s.height, s.pix_fmt = SIZE, SIZE, "yuvj420p"
        for f in _frames(good):
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
        for i in range(good, good + garbage):
            p = av.Packet(bytes(rng.integers(0, 256, 300, dtype=np.uint8)))
            p.stream, p.pts, p.dts, p.time_base = s, i, i, Fraction(1, 8)
            c.mux(p)
    return buf.getvalue()


def _audio_only_wav() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="wav") as c:
        s = c.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        c.mux(s.encode(frame))
        c.mux(s.encode())
    return buf.getvalue()


# file name -> the reason the check gives (None: a good video); "missing.webm" is listed but never written.
EXPECTED = {
    "good0.webm": None,
    "good1.webm": None,
    "good.mkv": None,  # MJPEG
    "short.webm": None,  # 4 frames < --num-frames 8: a warning
    "late_garbage.mkv": None,  # first frames fine, garbage after them: only --full sees it
    "missing.webm": "missing",
    "empty.webm": "empty",
    "random.mp4": "unreadable",
    "truncated.webm": "unreadable",
    "audio.wav": "no video stream",
    "garbage.mkv": "no frames",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("check")
    good = encode_vp9(_frames(FRAMES))
    files = {
        "good0.webm": good,
        "good1.webm": encode_vp9(_frames(FRAMES)[::-1].copy()),
        "good.mkv": _mjpeg_mkv(FRAMES, 0),
        "short.webm": encode_vp9(_frames(4)),
        "late_garbage.mkv": _mjpeg_mkv(FRAMES, 4),
        "empty.webm": b"",
        "random.mp4": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
        "truncated.webm": good[: len(good) * 2 // 3],
        "audio.wav": _audio_only_wav(),
        "garbage.mkv": _mjpeg_mkv(0, 4),
        "unlisted.webm": good,  # under the root, in no annotation
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "notes.txt").write_text("not a video: never reported\n")
    (root / "classes.txt").write_text("a\nb\n")
    (root / "train.txt").write_text("".join(f"{name} {i % 2}\n" for i, name in enumerate(EXPECTED)))
    (root / "val.txt").write_text("good0.webm 0\ngood1.webm 1\n")
    return root


def _check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    code = main(["data", "check", "--workers", "2", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_every_bad_video_is_named_with_its_reason(dataset: Path, tmp_path: Path, capsys) -> None:
    code, lines, err = _check(
        capsys, "--root", str(dataset), "--fmt", "list", "--splits", "train", "--out", str(tmp_path)
    )
    assert code == 1
    expected = {f"{dataset / name}: {reason}" for name, reason in EXPECTED.items() if reason}
    named = [line for line in lines if line.startswith(str(dataset))]
    assert sorted(named) == sorted(expected)  # each bad one once, no good one
    assert "train: 11 videos, 5 ok, 6 bad (missing 1, empty 1, unreadable 2, no video stream 1, no frames 1), " in (
        "\n".join(lines)
    )
    assert "\r" not in err and "[s4v] probe video 11/11" in err  # not a terminal: plain progress lines
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["unlisted"] == [str(dataset / "unlisted.webm")]  # notes.txt is no video; val's are listed
    assert doc["short"] == [{"path": str(dataset / "short.webm"), "frames": 4, "splits": ["train"]}]
    good = {v["path"]: v for v in doc["videos"]}[str(dataset / "good0.webm")]
    assert (good["frames"], good["width"], good["height"], good["fps"]) == (FRAMES, SIZE, SIZE, 8.0)
    skip = (tmp_path / "skip_list.txt").read_text().splitlines()
    assert skip[0].startswith("#") and sorted(skip[1:]) == sorted(line.split(": ")[0] for line in expected)
    for name in ("durations.png", "frames.png", "resolutions.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert "| train | 11 | 5 | 1 | 1 | 2 | 1 | 1 | 1 |" in (tmp_path / "report.md").read_text()


def test_full_decoding_catches_corruption_after_the_first_frames(dataset: Path, tmp_path: Path, capsys) -> None:
    args = ["--root", str(dataset), "--fmt", "list", "--splits", "train", "--out", str(tmp_path), "--full"]
    code, lines, _ = _check(capsys, *args)
    assert code == 1 and f"{dataset / 'late_garbage.mkv'}: unreadable" in lines
    assert not any(line.startswith(str(dataset / "good")) for line in lines)


def test_a_clean_split_exits_0_and_the_config_supplies_data(dataset: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("data:\n  fmt: list\n  num_frames: 8\n")
    skip = tmp_path / "skip.txt"
    skip.write_text("good0.webm\n")
    # Overrides after --splits are still overrides (a split name has no '='); the check ignores a skip list.
    args = ["--splits", "val", f"data.root={dataset}", f"data.skip_list={skip}", "--out", str(tmp_path)]
    code, lines, _ = _check(capsys, "--config", str(config), *args)
    assert code == 0, lines
    assert "val: 2 videos, 2 ok, 0 bad" in lines
    assert (tmp_path / "skip_list.txt").read_text().splitlines()[1:] == []


def test_usage_errors_are_one_line_and_exit_2(dataset: Path, capsys) -> None:
    for args, message in [
        (["--root", str(dataset), "--fmt", "ssv3"], "error: --fmt 'ssv3' is not one of 'list', 'ssv1', 'ssv2', 'k400'"),
        (["--root", str(dataset / "nope")], "error: data root"),
        (["--root", str(dataset), "--splits", "test"], "error: --splits test: splits are train and val"),
        ([], "error: s4v data check: pass --root"),
    ]:
        code, lines, err = _check(capsys, *args)
        assert code == 2 and lines == [] and len(err.splitlines()) == 1 and err.startswith(message), err


def test_frame_folders(tmp_path: Path, capsys) -> None:
    root = tmp_path / "ssv1"
    for vid, images in {"1": 3, "2": 0, "3": 2, "9": 2}.items():
        (root / vid).mkdir(parents=True)
        for k in range(images):
            Image.fromarray(_frames(1)[0]).save(root / vid / f"{k + 1:05d}.jpg")
    (root / "3" / "00001.jpg").write_bytes(b"not a jpeg")
    (root / "something-something-v1-labels.csv").write_text("Holding something\n")
    (root / "train.csv").write_text("1;Holding something\n2;Holding something\n3;Holding something\n")
    (root / "val.csv").write_text("1;Holding something\n")
    args = ["--root", str(root), "--fmt", "ssv1", "--out", str(tmp_path / "out")]
    code, lines, _ = _check(capsys, *args, "train_list=train.csv", "val_list=val.csv")
    assert code == 2  # overrides are run-config keys: data.train_list, not train_list
    code, lines, _ = _check(capsys, *args, "data.train_list=train.csv", "data.val_list=val.csv")
    assert code == 1 and [line for line in lines if line.startswith(str(root))] == [
        f"{root / '2'}: empty",
        f"{root / '3'}: unreadable",
    ]
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert doc["unlisted"] == [str(root / "9")]
    assert {v["path"]: v["frames"] for v in doc["videos"]}[str(root / "1")] == 3


def test_skip_list_file_format_and_errors(dataset: Path, tmp_path: Path) -> None:
    skip = tmp_path / "skip.txt"
    # a VideoRecord path as built, a path relative to the root, a comment and a blank line
    skip.write_text(f"# bad ones\n{dataset / 'empty.webm'}\n\nrandom.mp4\n")
    cfg = DataConfig(root=str(dataset), skip_list=str(skip))
    paths = [r.path for r in read_split(cfg, "train").records]
    assert len(paths) == len(EXPECTED) - 2 and str(dataset / "empty.webm") not in paths
    assert str(dataset / "random.mp4") not in paths
    with pytest.raises(UserError, match="data.skip_list: cannot read .*nope.txt"):
        read_split(DataConfig(root=str(dataset), skip_list=str(tmp_path / "nope.txt")), "train")


def test_skip_list_renumbers_retrieval_videos(tmp_path: Path) -> None:
    generate(tmp_path, num_classes=2, videos_per_class=2, val_fraction=0.0, frames=4, size=16, captions=True)
    (tmp_path / "skip.txt").write_text("1.webm\n")
    base = dict(root=str(tmp_path), fmt="msrvtt", train_list="captions_train.csv", class_file="captions.json")
    full, kept = (read_split(DataConfig(**base, skip_list=s), "train") for s in (None, str(tmp_path / "skip.txt")))
    assert kept.classes == ["0", "2", "3"] and [r.label for r in kept.records] == [0, 1, 2]
    assert kept.captions.captions == [full.captions.captions[i] for i in (0, 2, 3)]


def test_the_loader_with_the_check_s_skip_list_meets_no_bad_video(dataset: Path, tmp_path: Path, capsys, caplog):
    from s4v.data import build_loader

    # --full: the loader decodes up to its last sampled frame, so only a full decode finds late_garbage.mkv
    _check(capsys, "--root", str(dataset), "--fmt", "list", "--out", str(tmp_path), "--full")
    skip_list = tmp_path / "skip_list.txt"
    cfg = DataConfig(root=str(dataset), num_frames=FRAMES, image_size=SIZE, batch_size=1, num_workers=0)

    def epoch(cfg: DataConfig) -> tuple[set[str], set[str]]:
        loader = build_loader(cfg, "train")
        used = {loader.records[i].path for batch in loader for i in batch["index"].tolist()}
        return used, {path for path, _ in loader.bad_videos}

    used, bad = epoch(replace(cfg, max_bad_videos=100))
    assert bad == set(skip_list.read_text().splitlines()[1:])  # the loader's bad videos are the check's
    with caplog.at_level(logging.WARNING, logger="s4v.data"):
        used_skipping, bad = epoch(replace(cfg, skip_list=str(skip_list)))
    assert bad == set() and used_skipping == used and len(used) == 4
    assert "train split: left out 7 video(s) of data.skip_list" in caplog.text
