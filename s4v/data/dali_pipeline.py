"""One DALI graph from a batch of encoded videos to the model's input: decode (NVDEC on GPU, libavcodec on CPU
for VP8/VP9/MJPEG), then crop, resize, flip, RandAugment, grayscale and normalisation (training), or the
short-side resize and 1 or 3 crops (test views), batched over the videos and their repeated clips.

Nothing is random inside the graph: the frames, crop boxes, flips, RandAugment operations and grayscale
draws come from `s4v.data.loader.prepare` (the per-video generator of (seed, epoch, video index)) and are
fed per sample through `fn.external_source`, so a DALI batch holds the clips the PyTorch path
(`s4v.data.transforms`) makes from the same draws, and resume and world-size changes stay exact.
The geometry matches the PyTorch path to within DALI's antialiasing filter (max 0.5 of 255 levels on
natural frames, see tests/test_dali_pipeline.py); RandAugment as `s4v.data.randaug` documents.

`start` feeds a batch and schedules it (DALI's own threads, or the GPU, run it); `result` waits for it and
copies it into a torch tensor. The loader starts batch k + 1 before it hands batch k to the training loop,
so the graph works while the model computes; the training process itself does no per-clip work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from s4v.data import randaug
from s4v.data.config import CLIP_MEAN, CLIP_STD, DataConfig
from s4v.data.transforms import FILL, LUMA, view_geometry

if TYPE_CHECKING:
    from s4v.data.prepare import Prepared

_GRAY = np.array([LUMA] * 3, np.float32)  # every output channel = the frame's luma
_KEEP = np.eye(3, dtype=np.float32)


def _inputs(cfg: DataConfig, train: bool) -> list[str]:
    """Names of the per-sample inputs, in the order the graph declares them."""
    names = ["encoded", "frames"]
    if not train:
        return names + ["size"] + [f"corner{k}" for k in range(cfg.test_crops)]
    for r in range(cfg.num_repeats):
        names += [f"anchor{r}", f"shape{r}", f"flip{r}"]
        names += [f"ops{r}", f"params{r}"] if cfg.randaugment else []
        names += [f"gray{r}"] if cfg.grayscale > 0 else []
    return names


def _build(cfg: DataConfig, train: bool, num_threads: int, device_id: int | None):
    from nvidia.dali import fn, pipeline_def, types

    s = cfg.image_size
    ops = randaug.RandAugmentSpec.parse(cfg.randaugment).num_ops if cfg.randaugment else 0
    mean, std = [255 * m for m in CLIP_MEAN], [255 * d for d in CLIP_STD]

    def resize(x, size):
        # Linear with antialiasing: the filter of torch's `interpolate(..., antialias=True)` and PIL's resize.
        return fn.resize(x, size=size, interp_type=types.INTERP_LINEAR, antialias=True, dtype=types.FLOAT)

    def crop(x, corner, shape):  # (top, left) and (height, width) in pixels
        return fn.slice(x, corner, shape, axis_names="HW", normalized_anchor=False, normalized_shape=False)

    def normalise(x):
        return fn.crop_mirror_normalize(x, dtype=types.FLOAT, output_layout="FCHW", mean=mean, std=std)

    # Prefetch depth 1 with asynchronous execution: the loader copies each result out before it starts the
    # next batch, so one batch in flight already overlaps the training step; deeper queues only hold memory.
    @pipeline_def(
        batch_size=cfg.batch_size,
        num_threads=num_threads,
        device_id=device_id,
        prefetch_queue_depth=1,
        enable_conditionals=bool(cfg.randaugment) and train,  # RandAugment picks its op per sample
    )
    def graph():
        feeds = {n: fn.external_source(name=n) for n in _inputs(cfg, train)}
        # GPU-only branch: "mixed" = demux on the CPU, NVDEC decode, frames in GPU memory.
        video = fn.decoders.video(
            feeds["encoded"], frames=feeds["frames"], device="cpu" if device_id is None else "mixed"
        )
        if not train:
            x = resize(video, feeds["size"])
            crops = [feeds[f"corner{k}"] for k in range(cfg.test_crops)]
            return tuple(
                normalise(
                    fn.slice(x, c, [float(s)] * 2, axis_names="HW", normalized_anchor=False, normalized_shape=False)
                )
                for c in crops
            )
        clips = []
        for r in range(cfg.num_repeats):
            x = fn.slice(
                video,
                feeds[f"anchor{r}"],
                feeds[f"shape{r}"],
                axis_names="HW",
                normalized_anchor=False,
                normalized_shape=False,
            )
            x = fn.flip(resize(x, [s, s]), horizontal=feeds[f"flip{r}"])
            if cfg.randaugment:  # timm's ops work on uint8 images; DALI's cast rounds to nearest
                u8 = fn.cast(x, dtype=types.UINT8)
                x = fn.cast(
                    randaug.dali_apply(u8, feeds[f"ops{r}"], feeds[f"params{r}"], FILL, n=ops), dtype=types.FLOAT
                )
            if cfg.grayscale > 0:
                x = fn.coord_transform(x, M=feeds[f"gray{r}"])
            clips.append(normalise(x))
        return tuple(clips)

    pipe = graph()
    pipe.build()
    return pipe


def _sample(p: Prepared, cfg: DataConfig, train: bool) -> dict[str, np.ndarray]:
    """One video's per-sample inputs (see `_inputs`)."""
    out = {"encoded": np.frombuffer(p.data, np.uint8), "frames": p.frames.astype(np.int32)}
    if not train:
        size, corners = view_geometry(*p.video.size, cfg)
        out["size"] = np.array(size, np.float32)
        out.update({f"corner{k}": np.array(c, np.float32) for k, c in enumerate(corners)})
        return out
    for r, a in enumerate(p.params):
        top, left, h, w = a.crop
        out[f"anchor{r}"], out[f"shape{r}"] = np.array([top, left], np.float32), np.array([h, w], np.float32)
        out[f"flip{r}"] = np.array(int(a.flip), np.int32)
        if a.randaug is not None:
            out[f"ops{r}"], out[f"params{r}"] = a.randaug.ops, a.randaug.params
        if cfg.grayscale > 0:
            out[f"gray{r}"] = _GRAY if a.gray else _KEEP
    return out


def _to_torch(tensors, device: torch.device) -> torch.Tensor:
    dense = tensors.as_tensor()
    if device.type == "cuda":  # GPU-only branch: copy DALI's GPU buffer into a torch tensor
        from nvidia.dali.plugin.pytorch import feed_ndarray

        out = torch.empty(dense.shape(), dtype=torch.float32, device=device)
        feed_ndarray(dense, out)
        return out
    return torch.from_numpy(np.array(dense))


class DaliClips:
    """A loader's DALI graph: `start(preps)` schedules a batch, `result()` returns its clips, laid out as the
    PyTorch path's `finish` + collation lay them out: training (B x R, T, 3, S, S), a video's R clips
    adjacent; test (B, V, T, 3, S, S) clip-major over the V = clips x crops views, or (B, T, 3, S, S) for one."""

    def __init__(self, cfg: DataConfig, train: bool, num_threads: int, device: torch.device) -> None:
        self.cfg, self.train, self.num_threads, self.device = cfg, train, num_threads, device
        self.device_id = None if device.type == "cpu" else (device.index or 0)
        self._pipe = None

    def start(self, preps: list[Prepared]) -> None:
        if self._pipe is None:
            self._pipe = _build(self.cfg, self.train, self.num_threads, self.device_id)
        samples = [_sample(p, self.cfg, self.train) for p in preps]
        try:
            for name in _inputs(self.cfg, self.train):
                self._pipe.feed_input(name, [x[name] for x in samples])
            self._pipe.schedule_run()
        except Exception:
            self._pipe = None  # DALI invalidates a pipeline after an error
            raise

    def result(self) -> torch.Tensor:
        try:
            outs = self._pipe.share_outputs()
            clips = [_to_torch(o, self.device) for o in outs]
            self._pipe.release_outputs()
        except Exception:
            self._pipe = None
            raise
        video = torch.stack(clips, 1)  # (B, R, T, ...) train; (B, crops, clips x T, ...) test
        if self.train:
            return video.flatten(0, 1)
        b, crops, frames = video.shape[:3]
        clips_n = self.cfg.test_clips
        video = video.view(b, crops, clips_n, frames // clips_n, *video.shape[3:]).transpose(1, 2)
        video = video.reshape(b, clips_n * crops, *video.shape[3:])
        return video[:, 0] if clips_n * crops == 1 else video
