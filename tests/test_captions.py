"""Retrieval annotation readers on files written in each dataset's distributed layout; the loader reads
them once and the retrieval task takes them from it; no import cycle among s4v's modules."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from s4v.config import load_config
from s4v.data import annotations, build_loader
from s4v.data.annotations import AnnotationError
from s4v.data.captions import load_caption_split
from s4v.train.tasks import make_task


def _msrvtt(root: Path) -> None:
    sentences = [
        {"video_id": f"video{v}", "caption": f"caption {k} of {v}", "sen_id": 2 * v + k}
        for v in range(3)
        for k in range(2)
    ]
    (root / "MSRVTT_data.json").write_text(json.dumps({"videos": [], "sentences": sentences}))
    (root / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo1\n")
    (root / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\nret0,msr2,video2,a dog runs\n")
    (root / "videos").mkdir()
    (root / "videos" / "video0.mp4").write_bytes(b"")


def test_msrvtt_train_has_all_captions_and_test_the_jsfusion_one(tmp_path: Path) -> None:
    _msrvtt(tmp_path)
    train = load_caption_split("msrvtt", tmp_path, "MSRVTT_train.9k.csv", None)
    assert train.video_ids == ["video0", "video1"]
    assert train.captions[1] == ["caption 0 of 1", "caption 1 of 1"]
    assert train.records[0].path == str(tmp_path / "videos" / "video0.mp4") and train.records[1].label == 1
    test = load_caption_split("msrvtt", tmp_path, "MSRVTT_JSFUSION_test.csv", None)
    assert test.captions == [["a dog runs"]] and test.flat() == (["a dog runs"], [0])


def test_msvd_joins_words_and_keeps_every_caption(tmp_path: Path) -> None:
    (tmp_path / "raw-captions.pkl").write_bytes(pickle.dumps({"abc": [["a", "man"], ["a", "person"]], "xyz": [["b"]]}))
    (tmp_path / "test_list.txt").write_text("abc\nxyz\n")
    split = load_caption_split("msvd", tmp_path, "test_list.txt", None)
    assert split.flat() == (["a man", "a person", "b"], [0, 0, 1])


def test_vatex_reads_english_captions(tmp_path: Path) -> None:
    entries = [{"videoID": "v_1", "enCap": ["one", "two"], "chCap": ["x"]}]
    (tmp_path / "vatex_test.json").write_text(json.dumps(entries))
    assert load_caption_split("vatex", tmp_path, "vatex_test.json", None).captions == [["one", "two"]]


def test_malformed_annotations_name_the_file(tmp_path: Path) -> None:
    _msrvtt(tmp_path)
    (tmp_path / "bad.csv").write_text("vid\nvideo0\n")
    with pytest.raises(AnnotationError, match=r"bad.csv: missing column"):
        load_caption_split("msrvtt", tmp_path, "bad.csv", None)
    (tmp_path / "orphan.csv").write_text("video_id\nvideo9\n")
    with pytest.raises(AnnotationError, match=r"video9 has no caption"):
        load_caption_split("msrvtt", tmp_path, "orphan.csv", None)
    with pytest.raises(AnnotationError, match="not found"):
        load_caption_split("msvd", tmp_path, "train_list.txt", None)


def test_loader_reads_the_captions_once_and_the_retrieval_task_takes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _msrvtt(tmp_path)
    reads = []
    monkeypatch.setattr(annotations, "load_caption_split", lambda *a: reads.append(a) or load_caption_split(*a))
    cfg = load_config(
        None,
        [
            "model.task=retrieval",
            "model.preset=tiny-retrieval",
            f"data.root={tmp_path}",
            "data.fmt=msrvtt",
            "data.train_list=MSRVTT_train.9k.csv",
            "data.batch_size=1",
            "data.backend=pyav",
        ],
    )
    loader = build_loader(cfg.data, "train")
    task = make_task(cfg, torch.float32, torch.device("cpu"), loader)
    assert len(reads) == 1 and loader.captions is not None and loader.classes == ["video0", "video1"]
    assert [r.label for r in loader.records] == [0, 1]  # each video is its own class
    assert task.train_tokens.captions is loader.captions
    assert task.train_tokens.sample(torch.tensor([1, 0]), epoch=0).shape == (2, cfg.model.text_length)


def test_relative_data_root_resolves_once(synth: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`data.root` relative to the working directory, as the demo configs give it (`data/synth`)."""
    from s4v.data.annotations import read_split
    from s4v.data.config import DataConfig

    monkeypatch.chdir(synth.parent)
    cfg = DataConfig(
        root=synth.name, fmt="msrvtt", train_list="captions_train.csv", val_list="captions_test.csv",
        class_file="captions.json",
    )  # fmt: skip
    split = read_split(cfg, "train")
    assert split.records and all(Path(r.path).is_file() for r in split.records)
