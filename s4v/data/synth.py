"""Embedded default dataset: moving shapes whose class is the *direction of time*.

Classes come in pairs (moving right / moving left, approaching / receding, ...); the second class of a
pair is rendered exactly like the first and then played backwards, with independently sampled motion
parameters. The multiset of frames therefore has the same distribution for both classes of a pair, so
a model that pools frames in any order cannot beat chance within a pair (accuracy <= 1/2 overall),
while a model that sees order can reach ~100 %. Videos are real VP9 `.webm` files so the decoding
paths (DALI CPU, NVDEC, PyAV) are exercised exactly as on SSv2.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from s4v.core.errors import UserError

# (forward name, reversed name, motion kind); class 2k is the forward motion, class 2k+1 its time reverse.
PAIRS: list[tuple[str, str, str]] = [
    ("moving right", "moving left", "translate_x"),
    ("moving down", "moving up", "translate_y"),
    ("approaching", "receding", "scale"),
    ("rotating counter-clockwise", "rotating clockwise", "rotate"),
    ("appearing", "disappearing", "fade"),
]
MAX_CLASSES = 2 * len(PAIRS)
SHAPES = ("circle", "square", "triangle", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 210, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "magenta": (220, 50, 220),
    "cyan": (40, 220, 230),
    "white": (240, 240, 240),
    "orange": (250, 140, 20),
}
FPS = 8


def class_names(num_classes: int) -> list[str]:
    if not 2 <= num_classes <= MAX_CLASSES or num_classes % 2:
        raise UserError(f"--classes must be even and in [2, {MAX_CLASSES}], got {num_classes}")
    return [name for fwd, rev, _ in PAIRS for name in (fwd, rev)][:num_classes]


@dataclass(frozen=True)
class Motion:
    """Per-frame state of the single object in a video (arrays of length F), plus its looks."""

    cx: np.ndarray
    cy: np.ndarray
    radius: np.ndarray
    angle: np.ndarray  # radians, counter-clockwise on screen
    alpha: np.ndarray
    shape: str
    colour: str
    background: tuple[int, int, int]


def _ends(rng: np.random.Generator, lo: float, hi: float, min_gap: float) -> tuple[float, float]:
    """Two positions in [lo, hi], at least min_gap apart, returned ascending (the forward direction)."""
    while True:
        a, b = rng.uniform(lo, hi, size=2)
        if abs(a - b) >= min_gap:
            return (min(a, b), max(a, b))


def sample_motion(kind: str, rng: np.random.Generator, frames: int, size: int) -> Motion:
    """Sample the forward motion of `kind`; the paired class is this motion played backwards."""
    t = np.linspace(0.0, 1.0, frames)
    ones = np.ones(frames)
    shapes = SHAPES[1:] if kind == "rotate" else SHAPES  # a circle's rotation is invisible
    shape = shapes[rng.integers(len(shapes))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    background = tuple(int(v) for v in rng.integers(0, 60, size=3))
    radius = rng.uniform(0.12, 0.2) * size
    angle = rng.uniform(0, 2 * np.pi)
    lo, hi = radius + 1, size - radius - 1
    cx, cy = rng.uniform(lo, hi) * ones, rng.uniform(lo, hi) * ones
    r, a, alpha = radius * ones, angle * ones, ones
    if kind in ("translate_x", "translate_y"):
        start, end = _ends(rng, lo, hi, 0.4 * size)
        path = start + (end - start) * t
        cx, cy = (path, cy) if kind == "translate_x" else (cx, path)
    elif kind == "scale":
        small, large = rng.uniform(0.06, 0.1) * size, rng.uniform(0.22, 0.3) * size
        r = small + (large - small) * t
        cx, cy = rng.uniform(0.3, 0.7, size=2)[:, None] * size * ones
    elif kind == "rotate":
        r = rng.uniform(0.18, 0.26) * size * ones
        cx, cy = rng.uniform(0.35, 0.65, size=2)[:, None] * size * ones
        a = angle + np.deg2rad(rng.uniform(100, 160)) * t
    elif kind == "fade":
        t0, t1 = rng.uniform(0.0, 0.25), rng.uniform(0.75, 1.0)
        alpha = np.clip((t - t0) / (t1 - t0), 0.0, 1.0)
    else:
        raise ValueError(f"unknown motion kind {kind!r}")
    return Motion(cx, cy, r, a, alpha, shape, colour, background)


def _mask(m: Motion, size: int) -> np.ndarray:
    """(F, S, S) float coverage of the shape, computed for all frames at once."""
    grid = np.arange(size) + 0.5
    x = grid[None, None, :] - m.cx[:, None, None]
    y = m.cy[:, None, None] - grid[None, :, None]  # y up, so positive angles turn counter-clockwise
    c, s = np.cos(m.angle)[:, None, None], np.sin(m.angle)[:, None, None]
    u, v = x * c + y * s, -x * s + y * c
    r = m.radius[:, None, None]
    if m.shape == "circle":
        inside = u**2 + v**2 <= r**2
    elif m.shape == "square":
        inside = (np.abs(u) <= 0.8 * r) & (np.abs(v) <= 0.8 * r)
    elif m.shape == "triangle":
        inside = (v >= -0.5 * r) & (v <= r - np.sqrt(3) * np.abs(u))
    else:  # cross, with one longer arm so that its orientation is unambiguous
        arm = (np.abs(v) <= r / 3) & (u >= -0.6 * r) & (u <= r)
        inside = arm | ((np.abs(u) <= r / 3) & (np.abs(v) <= 0.6 * r))
    return inside.astype(np.float32)


def render(m: Motion, size: int) -> np.ndarray:
    """uint8 frames (F, S, S, 3)."""
    cover = (_mask(m, size) * m.alpha[:, None, None].astype(np.float32))[..., None]
    bg = np.asarray(m.background, np.float32)
    fg = np.asarray(COLOURS[m.colour], np.float32)
    return np.round(bg * (1 - cover) + fg * cover).astype(np.uint8)


def make_video(label: int, rng: np.random.Generator, frames: int, size: int) -> tuple[np.ndarray, Motion]:
    """Frames of one video of class `label`: odd labels are the even label's motion, reversed."""
    motion = sample_motion(PAIRS[label // 2][2], rng, frames, size)
    video = render(motion, size)
    return (video[::-1].copy() if label % 2 else video), motion


def encode_vp9(frames: np.ndarray, fps: int = FPS) -> bytes:
    """VP9 in WebM, the codec DALI's CPU decoder supports; single-threaded so output is deterministic."""
    buf = io.BytesIO()
    # bitexact: no random track UIDs or muxing date, so a seed gives byte-identical files
    with av.open(buf, "w", format="webm", options={"fflags": "+bitexact"}) as container:
        opts = {"deadline": "realtime", "cpu-used": "8", "crf": "18", "b:v": "0", "threads": "1"}
        stream = container.add_stream("libvpx-vp9", rate=fps, options=opts)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def caption(label: int, m: Motion) -> list[str]:
    """Captions built from what is actually drawn (colour, shape, motion), for retrieval."""
    thing = f"{m.colour} {m.shape}"
    name = class_names(MAX_CLASSES)[label]
    verbs = {
        "moving right": ["moves from left to right", "slides to the right"],
        "moving left": ["moves from right to left", "slides to the left"],
        "moving down": ["moves downwards", "falls from top to bottom"],
        "moving up": ["moves upwards", "rises from bottom to top"],
        "approaching": ["grows bigger as it approaches", "comes closer to the camera"],
        "receding": ["shrinks as it moves away", "recedes from the camera"],
        "rotating counter-clockwise": ["rotates counter-clockwise", "turns to the left"],
        "rotating clockwise": ["rotates clockwise", "turns to the right"],
        "appearing": ["fades in", "slowly appears"],
        "disappearing": ["fades out", "slowly disappears"],
    }[name]
    return [f"a {thing} {verbs[0]}", f"the {thing} {verbs[1]} on a dark background"]


def generate(
    out: Path,
    num_classes: int = 8,
    videos_per_class: int = 60,
    val_fraction: float = 0.2,
    frames: int = 16,
    size: int = 64,
    seed: int = 0,
    captions: bool = False,
) -> dict:
    """Write videos and annotation files (generic lists, SSv2 json, optional MSR-VTT captions)."""
    names = class_names(num_classes)
    n_val = int(round(videos_per_class * val_fraction))
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[tuple[str, int]]] = {"train": [], "val": []}
    msrvtt: dict[str, list] = {"videos": [], "sentences": []}
    vid = 0
    for label in range(num_classes):
        for i in range(videos_per_class):
            split = "val" if i < n_val else "train"
            rng = np.random.default_rng([seed, label, i])
            video, motion = make_video(label, rng, frames, size)
            (out / f"{vid}.webm").write_bytes(encode_vp9(video))
            rows[split].append((str(vid), label))
            if captions:
                msrvtt["videos"].append({"video_id": str(vid), "id": vid, "split": split})
                for text in caption(label, motion):
                    msrvtt["sentences"].append(
                        {"caption": text, "video_id": str(vid), "sen_id": len(msrvtt["sentences"])}
                    )
            vid += 1
    (out / "classes.txt").write_text("".join(f"{n}\n" for n in names))
    ssv2_files = {
        "train": "something-something-v2-train.json",
        "val": "something-something-v2-validation.json",
    }
    for split, items in rows.items():
        (out / f"{split}.txt").write_text("".join(f"{v}.webm {label}\n" for v, label in items))
        entries = [{"id": v, "label": names[lb], "template": names[lb], "placeholders": []} for v, lb in items]
        (out / ssv2_files[split]).write_text(json.dumps(entries, indent=1))
    (out / "something-something-v2-labels.json").write_text(
        json.dumps({n: str(i) for i, n in enumerate(names)}, indent=1)
    )
    if captions:  # MSR-VTT's layout: data json, a train csv, a JSFUSION-style test csv (first caption)
        (out / "captions.json").write_text(json.dumps(msrvtt, indent=1))
        (out / "captions_train.csv").write_text("video_id\n" + "".join(f"{v}\n" for v, _ in rows["train"]))
        first = {e["video_id"]: e["caption"] for e in reversed(msrvtt["sentences"])}
        (out / "captions_test.csv").write_text(
            "key,vid_key,video_id,sentence\n"
            + "".join(f"ret{i},msr{v},{v},{first[v]}\n" for i, (v, _) in enumerate(rows["val"]))
        )
    meta = {
        "classes": names,
        "videos_per_class": videos_per_class,
        "train": len(rows["train"]),
        "val": len(rows["val"]),
        "frames": frames,
        "size": size,
        "fps": FPS,
        "seed": seed,
        "codec": "vp9",
        "flip_safe": False,
    }
    (out / "synth.json").write_text(json.dumps(meta, indent=1))
    return meta


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="s4v synth", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--classes", type=int, default=8, help=f"even number <= {MAX_CLASSES}")
    p.add_argument("--videos-per-class", type=int, default=60)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--captions", action="store_true", help="also write MSR-VTT-style captions.json")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    meta = generate(a.out, a.classes, a.videos_per_class, a.val_fraction, a.frames, a.size, a.seed, a.captions)
    mb = sum(f.stat().st_size for f in a.out.iterdir()) / 2**20
    print(
        f"wrote {meta['train']} train + {meta['val']} val videos ({len(meta['classes'])} classes, "
        f"{a.frames}x{a.size}x{a.size}) to {a.out}: {mb:.1f} MiB in {time.perf_counter() - t0:.1f} s"
    )
    return 0
