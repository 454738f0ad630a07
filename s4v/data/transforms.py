"""Clip augmentation (Table 12) and test-time views in torch: the reference path, run by the PyAV workers.

Every random choice is drawn up front from a per-sample numpy Generator seeded by (seed, epoch, video
index) (`draw_params`), so a batch is identical whichever worker, rank, resume point or backend produces
it: the DALI pipeline (`s4v.data.dali_pipeline`) is fed the same `AugParams` and the same geometry
(`view_geometry`). The same crop/flip/colour op is applied to every frame of a clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from s4v.data import randaug
from s4v.data.config import CLIP_MEAN, CLIP_STD, DataConfig

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as torchvision's rgb_to_grayscale
# RandAugment's fill for pixels a geometric op uncovers: timm's `img_mean` hparam, the data mean in 0..255.
FILL = tuple(round(255 * m) for m in CLIP_MEAN)


@dataclass(frozen=True)
class AugParams:
    crop: tuple[int, int, int, int]  # top, left, height, width in source pixels
    flip: bool
    gray: bool
    randaug: randaug.RandDraw | None


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
    ops = randaug.draw(rng, randaug.RandAugmentSpec.parse(cfg.randaugment), cfg.image_size) if cfg.randaugment else None
    return AugParams(crop, flip, gray, ops)


def _resize(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, 3, h, w) uint8 -> float in [0, 255], bilinear with antialiasing (PIL-like)."""
    return F.interpolate(frames.float(), size=size, mode="bilinear", antialias=True, align_corners=False)


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
    if p.randaug is not None:  # timm's PIL ops work on uint8 images
        u8 = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        x = torch.from_numpy(randaug.apply_reference(u8, p.randaug, FILL)).permute(0, 3, 1, 2).to(x.device).float()
    if p.gray:
        luma = sum(c * x[:, i : i + 1] for i, c in enumerate(LUMA))
        x = luma.expand_as(x)
    return normalize(x)


def view_geometry(h: int, w: int, cfg: DataConfig) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """Test views of an h x w video: the size its short side resized to S gives, and the (top, left) of each
    S x S crop: the centre (1 crop) or both ends and the centre of the long side (3 crops)."""
    s = cfg.image_size
    scale = s / min(h, w)
    nh, nw = max(s, int(round(h * scale))), max(s, int(round(w * scale)))
    offsets = [0.5] if cfg.test_crops == 1 else [0.0, 0.5, 1.0]
    return (nh, nw), [(int(round((nh - s) * o)), int(round((nw - s) * o))) for o in offsets]


def test_views(frames: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> (crops, T, 3, S, S), as `view_geometry` places them."""
    s = cfg.image_size
    size, corners = view_geometry(*frames.shape[1:3], cfg)
    x = _resize(frames.permute(0, 3, 1, 2), size)
    return normalize(torch.stack([x[:, :, top : top + s, left : left + s] for top, left in corners]))
