"""`s4v predict`, `s4v embed` and `s4v search` on checkpoints trained here for one epoch: the numbers are the
evaluation's (class probabilities, retrieval scores, t2v R@1), any file PyAV reads works, and a bad file
costs only itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch import nn

from s4v.cli import main
from s4v.config import Config, load_config
from s4v.data import build_loader
from s4v.data.loader import VideoLoader
from s4v.models.architectures import PRESETS
from s4v.models.matching import blockwise_similarity
from s4v.train.build import build_model
from s4v.train.checkpoint import load_trainable, read_meta
from s4v.train.evaluate import predict
from s4v.train.precision import prepare_for_dtype
from s4v.train.retrieval import CaptionTokens, evaluate_retrieval

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-5


def _train(synth: Path, out: Path, *extra: str) -> Path:
    cmd = [
        sys.executable, "launch/train.py", "--ds", "ds_configs/cpu.json", *extra,
        f"data.root={synth}", "data.batch_size=8", "data.num_workers=0", "optim.batch_size=8", "optim.epochs=1",
        "optim.warmup_epochs=0", "train.eval_every_epochs=0", "train.progress=false", "tracking.enabled=false",
        f"train.out_dir={out}",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "final"


@pytest.fixture(scope="module")
def recognition(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(synth, tmp_path_factory.mktemp("recognition"))


@pytest.fixture(scope="module")
def retrieval(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(synth, tmp_path_factory.mktemp("retrieval"), "--config", "configs/synth_retrieval_tiny.yaml")


def _s4v(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _evaluation(final: Path, crops: int, clips: int) -> tuple[nn.Module, Config, VideoLoader]:
    """Model and validation loader built as `launch/eval.py` builds them, from the checkpoint's own files."""
    cfg = load_config(
        final / "config.yaml", [f"data.test_crops={crops}", f"data.test_clips={clips}", "data.num_workers=0"]
    )
    model = build_model(cfg, read_meta(final)["num_classes"], torch.device("cpu"))
    prepare_for_dtype(model, torch.float32).load_state_dict(load_trainable(final))
    return model.eval(), cfg, build_loader(cfg.data, "val")


def test_predict_gives_the_evaluation_probabilities(recognition: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, _, loader = _evaluation(recognition, 3, 2)
    idx, _, probs = predict(model, loader, torch.float32)
    expected = {loader.records[i].path: p for i, p in zip(idx, probs, strict=True)}
    videos = [loader.records[0].path, loader.records[-1].path]  # two classes

    code, out, err = _s4v(
        capsys, "predict", *videos, "--checkpoint", recognition, "--views", "3x2", "--top", 4, "--json"
    )
    assert code == 0 and err == "", err
    doc = json.loads(out)
    assert [v["path"] for v in doc["videos"]] == videos and doc["failed"] == []
    for video in doc["videos"]:
        got = np.array([t["prob"] for t in sorted(video["top"], key=lambda t: t["index"])])
        np.testing.assert_allclose(got, expected[video["path"]], atol=TOL, rtol=0)
        assert [t["class"] for t in video["top"]] == [loader.classes[t["index"]] for t in video["top"]]
        assert [t["prob"] for t in video["top"]] == sorted(got, reverse=True)


def test_predict_top1_matches_launch_eval(
    recognition: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """launch/eval.py (which loads through the same `load_trained`) and `s4v predict` on the whole val split."""
    evaluated = subprocess.run(
        [sys.executable, "launch/eval.py", "--checkpoint", str(recognition), "--views", "1x2", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads((tmp_path / "eval.json").read_text())
    loader = build_loader(load_config(recognition / "config.yaml", ["data.num_workers=0"]).data, "val")
    paths = [r.path for r in loader.records]
    code, out, _ = _s4v(capsys, "predict", *paths, "--checkpoint", recognition, "--views", "1x2", "--json")
    assert code == 0
    top1 = [v["top"][0]["index"] == r.label for v, r in zip(json.loads(out)["videos"], loader.records, strict=True)]
    assert report["num_videos"] == len(paths) and float(np.mean(top1)) == report["top1"]


def _write_h264(path: Path, width: int = 96, height: int = 80, frames: int = 12) -> None:
    """A square moving right on a grey background, H.264 in MP4 (this PyAV build ships libx264)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            img = np.full((height, width, 3), 90, np.uint8)
            img[30:50, 6 * t : 6 * t + 20] = (230, 40, 40)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())


def test_predict_reads_an_h264_mp4_of_another_resolution(
    recognition: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = tmp_path / "clip.mp4"
    _write_h264(video)
    with av.open(str(video)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.width, s.height, s.frames) == ("h264", 96, 80, 12)
    code, out, err = _s4v(capsys, "predict", video, "--checkpoint", recognition, "--views", "3x1", "--top", 3)
    assert code == 0 and err == "", err
    lines = out.splitlines()
    assert lines[0] == str(video) and len(lines) == 4
    classes = read_meta(recognition)["classes"]
    for rank, line in enumerate(lines[1:], 1):
        assert line.split()[0] == str(rank) and line.endswith("%")
        assert any(name in line for name in classes)


def test_a_bad_file_fails_alone(
    recognition: Path, synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "x.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    good = synth / "0.webm"
    code, out, err = _s4v(capsys, "predict", bad, good, "--checkpoint", recognition)
    assert code == 1
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {bad}: corrupt"), err
    assert out.splitlines()[0] == str(good) and len(out.splitlines()) == 1 + 4  # 4 classes < --top 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoint", "/nonexistent/final"], "no such directory"),
        (["--views", "2x1"], "crops must be one of 1, 3"),
        (["--top", "0"], "--top 0"),
    ],
)
def test_predict_user_errors(
    recognition: Path, synth: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = _s4v(capsys, "predict", synth / "0.webm", "--checkpoint", recognition, *args)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and err.startswith("error: ") and message in err


def test_checkpoint_of_the_other_task_is_a_user_error(
    recognition: Path, retrieval: Path, synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _s4v(capsys, "predict", synth / "0.webm", "--checkpoint", retrieval)
    assert code == 2 and "holds a retrieval model" in err and "s4v embed" in err
    code, _, err = _s4v(capsys, "embed", "--checkpoint", recognition, "--videos", synth, "--out", tmp_path / "no.npz")
    assert code == 2 and "holds a recognition model" in err and not (tmp_path / "no.npz").exists()


@torch.no_grad()
def test_search_scores_and_recall_equal_the_evaluation(
    retrieval: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, cfg, loader = _evaluation(retrieval, 1, 2)
    listing = tmp_path / "videos.txt"
    listing.write_text("".join(f"{r.path}\n" for r in loader.records))
    index = tmp_path / "index.npz"
    code, _, err = _s4v(
        capsys, "embed", "--checkpoint", retrieval, "--videos", listing, "--out", index, "--views", "1x2"
    )
    assert code == 0, err

    # The reference: evaluate_retrieval's own steps on the validation loader.
    frames = []
    for batch in loader:
        f = model.encode_video(batch["video"].flatten(0, 1)).float()
        frames.append(f.view(batch["video"].shape[0], 2, *f.shape[1:]).mean(1))
    frames = torch.cat(frames)
    tokenizer = PRESETS[cfg.model.preset].tower.tokenizer
    tokens = CaptionTokens(loader.captions, tokenizer, cfg.model.text_length, cfg.train.seed)
    text_tokens, owner = tokens.all()
    expected = blockwise_similarity(model.similarity, *model.encode_text(text_tokens), frames)
    metrics = evaluate_retrieval(model, loader, tokens, torch.float32, torch.device("cpu"))

    with np.load(index) as z:
        assert list(z["ids"]) == [Path(r.path).stem for r in loader.records]
        np.testing.assert_allclose(z["embeddings"], frames.numpy(), atol=TOL, rtol=0)
    captions, _ = loader.captions.flat()
    code, out, err = _s4v(
        capsys, "search", "--checkpoint", retrieval, "--index", index, *captions, "--top", 99, "--json"
    )
    assert code == 0, err
    queries = json.loads(out)["queries"]
    column = {Path(r.path).stem: j for j, r in enumerate(loader.records)}
    got = torch.full_like(expected, float("nan"))
    for i, q in enumerate(queries):
        assert q["text"] == captions[i] and len(q["results"]) == len(loader.records)
        for hit in q["results"]:
            got[i, column[hit["id"]]] = hit["score"]
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)
    # R@1 as the metric counts it (ties against the ground truth), from the scores `search` printed.
    truth = got[torch.arange(len(owner)), owner]
    r_at_1 = 100.0 * float(((got >= truth[:, None]).sum(1) == 1).double().mean())
    assert r_at_1 == pytest.approx(metrics["t2v_R@1"])

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(captions) + "\n")
    video = loader.records[3].path
    code, out, err = _s4v(
        capsys, "search", "--checkpoint", retrieval, "--video", video, "--texts", texts, "--views", "1x2", "--json"
    )
    assert code == 0, err
    hits = json.loads(out)["results"]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    for hit in hits:
        assert captions[hit["line"] - 1] == hit["text"]
        assert abs(hit["score"] - float(expected[hit["line"] - 1, 3])) <= TOL

    code, out, err = _s4v(capsys, "search", "--checkpoint", retrieval, "--index", index, captions[0], "--top", 3)
    assert code == 0 and out.splitlines()[0] == repr(captions[0]) and len(out.splitlines()) == 4
