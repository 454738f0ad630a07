"""DALI CPU vs PyAV decode the same frames; bad files are reported with their path and kind."""

import io

import av
import numpy as np
import pytest

from s4v.data.annotations import VideoRecord
from s4v.data.config import DataConfig
from s4v.data.dali import DaliVideoDecoder
from s4v.data.decode import BadVideo, probe, read_bytes, read_clip
from s4v.data.loader import resolve_backend
from s4v.data.sampling import clip_indices
from s4v.data.synth import encode_vp9, generate

N_FRAMES, H, W = 30, 48, 80


def _numbered_frames() -> np.ndarray:
    """Frame k: flat grey level 20 + 7 k (identifies k after lossy coding) plus a moving bar."""
    frames = np.empty((N_FRAMES, H, W, 3), np.uint8)
    for k in range(N_FRAMES):
        frames[k] = 20 + 7 * k
        frames[k, 10:38, 2 * k : 2 * k + 12] = (250, 30, 30)
    return frames


def _encode(frames: np.ndarray, codec: str, fmt: str, pix_fmt: str) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = W, H, pix_fmt
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    return buf.getvalue()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("codecs")
    frames = _numbered_frames()
    paths = {
        "vp9": d / "numbered.webm",
        "mjpeg": d / "numbered.avi",
        "h264": d / "numbered.mp4",
    }
    paths["vp9"].write_bytes(encode_vp9(frames, fps=25))
    paths["mjpeg"].write_bytes(_encode(frames, "mjpeg", "avi", "yuvj420p"))
    paths["h264"].write_bytes(_encode(frames, "libx264", "mp4", "yuv420p"))
    return {k: str(v) for k, v in paths.items()}


def _frame_numbers(clip: np.ndarray) -> np.ndarray:
    """Recover each decoded frame's index from its background grey level (top-left corner)."""
    return np.round((clip[:, :8, :8].astype(float).mean((1, 2, 3)) - 20) / 7).astype(int)


@pytest.mark.parametrize("codec", ["vp9", "mjpeg"])
@pytest.mark.parametrize(
    "sampling, kw", [("segment", {}), ("segment", {"clip": 1, "num_clips": 2}), ("dense", {"stride": 3})]
)
def test_dali_cpu_and_pyav_give_the_same_frames(videos, codec, sampling, kw):
    path = videos[codec]
    assert probe(path) == N_FRAMES
    expected = clip_indices(N_FRAMES, 8, sampling, kw.get("stride", 8), None, kw.get("clip", 0), kw.get("num_clips", 1))
    pyav = read_clip(path, 8, sampling, "pyav", **kw)
    dali = read_clip(path, 8, sampling, "dali", **kw)
    assert pyav.shape == dali.shape == (8, H, W, 3) and pyav.dtype == dali.dtype == np.uint8
    np.testing.assert_array_equal(_frame_numbers(pyav), expected)
    np.testing.assert_array_equal(_frame_numbers(dali), expected)
    diff = np.abs(pyav.astype(int) - dali.astype(int))
    # codec tolerance: the two decoders differ only in YUV->RGB conversion and chroma upsampling
    assert diff.mean() < 4 and np.percentile(diff, 99) < 40, (diff.mean(), np.percentile(diff, 99))


def test_dali_cpu_and_pyav_agree_on_the_synthetic_set(tmp_path):
    generate(tmp_path, num_classes=8, videos_per_class=1, val_fraction=0.0)
    for k in range(8):
        path = str(tmp_path / f"{k}.webm")
        pyav, dali = read_clip(path, backend="pyav"), read_clip(path, backend="dali")
        assert np.abs(pyav.astype(int) - dali.astype(int)).mean() < 4


def test_h264_on_cpu_goes_to_pyav(videos):
    def pick(path, backend="auto", device="cpu"):
        return resolve_backend(DataConfig(root="/", backend=backend, device=device), [VideoRecord(path, 0)])

    assert pick(videos["h264"]) == "pyav" and pick(videos["vp9"]) == "pyav"  # auto on CPU: worker processes
    assert pick(videos["h264"], device="cuda") == "dali"  # GPU: NVDEC reads H.264
    assert pick(videos["vp9"], "dali") == "dali" and pick(videos["mjpeg"], "dali") == "dali"
    with pytest.raises(ValueError, match="cannot read h264"):
        pick(videos["h264"], "dali")
    clip = read_clip(videos["h264"], 8, backend="pyav")  # PyAV decodes what DALI's CPU decoder cannot
    np.testing.assert_array_equal(_frame_numbers(clip), clip_indices(N_FRAMES, 8, "segment"))
    with pytest.raises(RuntimeError):  # DALI CPU refuses H.264: the reason for the fallback
        DaliVideoDecoder(1).decode([read_bytes(videos["h264"])], [np.arange(4)])


def _bad_files(d, good: bytes) -> dict[str, str]:
    paths = {
        "missing": d / "missing.webm",
        "empty": d / "empty.webm",
        "truncated": d / "truncated.webm",
        "corrupt": d / "corrupt.webm",
    }
    paths["empty"].write_bytes(b"")
    paths["truncated"].write_bytes(good[: len(good) * 2 // 3])
    paths["corrupt"].write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    return {k: str(v) for k, v in paths.items()}


@pytest.mark.parametrize("backend", ["pyav", "dali"])
def test_each_kind_of_bad_file_names_the_file_and_the_problem(videos, tmp_path, backend):
    reasons = {"missing": "missing file", "empty": "empty file", "truncated": "truncated", "corrupt": "corrupt"}
    for kind, path in _bad_files(tmp_path, read_bytes(videos["vp9"])).items():
        with pytest.raises(BadVideo) as err:
            read_clip(path, 8, backend=backend)
        assert err.value.path == path and reasons[kind] in err.value.reason and path in str(err.value)


def test_dali_decoder_recovers_after_a_failed_batch(videos):
    dec = DaliVideoDecoder(batch_size=2)
    good = read_bytes(videos["vp9"])
    with pytest.raises(RuntimeError):
        dec.decode([good, b"\x00" * 512], [np.arange(4), np.arange(4)])
    (clip,) = dec.decode([good], [np.array([5, 1])])
    np.testing.assert_array_equal(_frame_numbers(clip.numpy()), [5, 1])


def test_ssv1_jpeg_frame_folders(tmp_path):
    from PIL import Image

    from s4v.data import DataConfig, build_loader

    frames = _numbered_frames()
    for vid in ("101", "102"):
        (tmp_path / vid).mkdir()
        for k, f in enumerate(frames):
            Image.fromarray(f).save(tmp_path / vid / f"{k + 1:05d}.jpg", quality=95)
    np.testing.assert_array_equal(
        _frame_numbers(read_clip(str(tmp_path / "101"), 8)), clip_indices(N_FRAMES, 8, "segment")
    )
    (tmp_path / "something-something-v1-labels.csv").write_text("Holding something\nDropping something\n")
    (tmp_path / "val.csv").write_text("101;Dropping something\n102;Holding something\n")
    cfg = DataConfig(root=str(tmp_path), fmt="ssv1", val_list="val.csv", num_frames=8, image_size=32, num_workers=0)
    ld = build_loader(cfg, "val")
    (batch,) = list(ld)
    assert ld.backend == "pyav" and batch["video"].shape == (2, 8, 3, 32, 32) and batch["label"].tolist() == [1, 0]
