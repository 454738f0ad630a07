"""Clip augmentation (Table 12) and test-time views, in torch so CPU and GPU batches share one code path.

Every random choice is drawn up front from a per-sample numpy Generator seeded by (seed, epoch, video
index) (`draw_params`), so a batch is identical whichever worker, rank or resume point produces it.
The same crop/flip/colour op is applied to every frame of a clip.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from s4v.data.config import CLIP_MEAN, CLIP_STD, DataConfig

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class AugParams:
    crop: tuple[int, int, int, int]  # top, left, height, width in source pixels
    flip: bool
    gray: bool
    randaug_seed: int | None


def random_resized_crop(
    rng: np.random.Generator, h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, drawing from `rng`."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1)), ch, cw
    in_ratio = w / h  # fallback: central crop with the ratio clamped
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def draw_params(rng: np.random.Generator, cfg: DataConfig, h: int, w: int) -> AugParams:
    crop = random_resized_crop(rng, h, w, cfg.crop_scale, cfg.crop_ratio)
    flip = bool(rng.random() < 0.5) and cfg.use_flip
    gray = bool(rng.random() < cfg.grayscale)
    ra_seed = int(rng.integers(2**31)) if cfg.randaugment else None
    return AugParams(crop, flip, gray, ra_seed)


def _resize(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, 3, h, w) uint8 -> float in [0, 255], bilinear with antialiasing (PIL-like)."""
    return F.interpolate(frames.float(), size=size, mode="bilinear", antialias=True, align_corners=False)


def _randaugment(frames: torch.Tensor, spec: str, seed: int) -> torch.Tensor:
    """timm RandAugment (Table 12's `rand-m7-n4-mstd0.5-inc1`), same ops and magnitudes on every frame.

    timm draws from the global `random` / `np.random` states: reseeding them before each frame makes
    the frames share one draw; the caller's states are restored afterwards.
    """
    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform

    size = frames.shape[-1]
    hparams = {"translate_const": int(size * 0.45), "img_mean": tuple(round(255 * m) for m in CLIP_MEAN)}
    ra = rand_augment_transform(spec, hparams)
    py_state, np_state = random.getstate(), np.random.get_state()
    out = []
    try:
        for frame in frames.permute(0, 2, 3, 1).cpu().numpy():
            random.seed(seed)
            np.random.seed(seed)
            out.append(np.asarray(ra(Image.fromarray(frame))))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(frames.device)


def normalize(frames: torch.Tensor) -> torch.Tensor:
    """[0, 255] (..., 3, H, W) -> CLIP mean/std normalised float32."""
    mean = torch.tensor(CLIP_MEAN, device=frames.device).view(3, 1, 1) * 255
    std = torch.tensor(CLIP_STD, device=frames.device).view(3, 1, 1) * 255
    return (frames.float() - mean) / std


def train_transform(frames: torch.Tensor, p: AugParams, cfg: DataConfig) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> normalised float (T, 3, S, S)."""
    top, left, ch, cw = p.crop
    x = frames.permute(0, 3, 1, 2)[:, :, top : top + ch, left : left + cw]
    x = _resize(x, (cfg.image_size, cfg.image_size))
    if p.flip:
        x = x.flip(-1)
    if p.randaug_seed is not None:
        x = _randaugment(x.round().clamp(0, 255).to(torch.uint8), cfg.randaugment, p.randaug_seed).float()
    if p.gray:
        luma = sum(c * x[:, i : i + 1] for i, c in enumerate(_LUMA))
        x = luma.expand_as(x)
    return normalize(x)


def test_views(frames: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> (crops, T, 3, S, S): short side resized to S, then the centre crop
    (1 crop) or both ends and the centre of the long side (3 crops)."""
    s = cfg.image_size
    h, w = frames.shape[1:3]
    scale = s / min(h, w)
    nh, nw = max(s, int(round(h * scale))), max(s, int(round(w * scale)))
    x = _resize(frames.permute(0, 3, 1, 2), (nh, nw))
    long_room = (nh - s, nw - s)
    offsets = [0.5] if cfg.test_crops == 1 else [0.0, 0.5, 1.0]
    views = []
    for o in offsets:
        top, left = int(round(long_room[0] * o)), int(round(long_room[1] * o))
        views.append(x[:, :, top : top + s, left : left + s])
    return normalize(torch.stack(views))
