"""timm's RandAugment with every random choice drawn in Python, applied by PIL (reference) or DALI.

`draw` samples one clip's ops from a numpy Generator with timm's distribution (op choice with replacement,
per-op probability, magnitude noise, timm's level-to-argument maps and random signs), so a clip's ops are
a function of (seed, epoch, video index). `apply_reference` runs timm's own PIL op functions on every
frame; `dali_apply` runs the same draw inside a DALI graph, with operators that have CPU and GPU variants.

Where DALI differs from the PIL reference (measured in tests/test_randaug.py, on the CPU):
- geometric ops: DALI's warp has no bicubic filter, so slots where timm picks BICUBIC run bilinear;
  bilinear matches PIL's (pixel centres, edge clamping, fill outside, truncation) to 1 level, where
  float32 and double coordinates put a value on either side of an integer;
- Equalize: DALI has no histogram operator to build PIL's table from; `_equalize` rescales DALI's
  OpenCV-style equalize to within 1 level of PIL;
- every other op is exact. The GPU variants are not covered by these tests: a float32 multiply-add
  fused on the GPU may move a truncated blend value by 1 level.
The PyTorch path (`apply_reference`) stays the reference."""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from s4v.core.errors import UserError

_LEVEL_DENOM = 10.0  # timm's magnitudes are levels out of 10
# timm's `_RAND_TRANSFORMS`; inc1 (`_RAND_INCREASING_TRANSFORMS`) takes the "...Increasing" variants of _GRADED
_RAND_NAMES = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
    "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)  # fmt: skip
_GRADED = frozenset({"Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness"})

# Op ids fed to DALI: one per PIL function, with parameters in its own units (a timm name and its
# "Increasing" variant share an id; TranslateX/YRel become pixel shifts). 0 is a skipped slot.
OPS: tuple[str, ...] = (
    "Identity", "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY",
)  # fmt: skip
_ID = {name: i for i, name in enumerate(OPS)}
GEOMETRIC = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"})


@dataclass(frozen=True)
class RandAugmentSpec:
    """A timm RandAugment spec ("rand-m7-n4-mstd0.5-inc1") plus the `translate_pct` hparam."""

    magnitude: int = 10
    num_ops: int = 2
    magnitude_std: float = 0.0  # inf: magnitude uniform in [0, magnitude]
    magnitude_max: float = _LEVEL_DENOM
    prob: float = 0.5
    increasing: bool = False
    translate_pct: float = 0.45

    @classmethod
    @functools.cache  # drawn for every clip: parse each spec string once per process
    def parse(cls, spec: str) -> RandAugmentSpec:
        head, *sections = spec.split("-")
        if head != "rand":
            raise UserError(f"RandAugment spec {spec!r} must start with 'rand-'")
        kw: dict[str, Any] = {}
        for s in sections:
            m = re.fullmatch(r"(mstd|mmax|inc|m|n|p)(\d[\d.]*)", s)
            try:
                key, val = m.groups() if m else ("", "")
                if key == "mstd":  # timm: above 100 means uniform sampling
                    kw["magnitude_std"] = math.inf if float(val) > 100 else float(val)
                elif key == "mmax":
                    kw["magnitude_max"] = float(int(val) or _LEVEL_DENOM)  # timm: mmax0 keeps the default
                elif key in ("inc", "m", "n"):
                    kw[{"inc": "increasing", "m": "magnitude", "n": "num_ops"}[key]] = int(val)
                elif key == "p":
                    kw["prob"] = float(val)
                else:
                    raise ValueError
            except ValueError:
                sections = "m<int> n<int> mstd<float> mmax<int> inc<0|1> p<float>"
                raise UserError(f"RandAugment spec {spec!r}: bad section {s!r} (supported: {sections})") from None
        if not 0.0 <= kw.get("prob", 0.5) <= 1.0:
            raise UserError(f"RandAugment spec {spec!r}: p must lie in [0, 1]")
        kw["increasing"] = bool(kw.get("increasing", False))
        return cls(**kw)

    @property
    def transforms(self) -> tuple[str, ...]:
        """The timm op names `n` ops are chosen from."""
        return tuple(n + "Increasing" if self.increasing and n in _GRADED else n for n in _RAND_NAMES)


def level_to_param(name: str, level: float, negate: bool, size: int, translate_pct: float = 0.45) -> float:
    """The argument timm's op `name` gets at magnitude `level`, in the PIL function's units (translation in
    pixels of a `size`-pixel image); `negate` is timm's coin flip for the ops it negates."""
    frac = level / _LEVEL_DENOM
    sign = -1.0 if negate else 1.0  # used by the ops timm negates: geometric ones, increasing enhances
    base = name.removesuffix("Increasing")
    if name in ("AutoContrast", "Equalize", "Invert"):
        return 0.0
    if name == "Rotate":
        return sign * (frac * 30.0)
    if name in ("ShearX", "ShearY"):
        return sign * (frac * 0.3)
    if name in ("TranslateXRel", "TranslateYRel"):
        return sign * (frac * translate_pct) * size
    if name == "SolarizeAdd":
        return float(min(128, int(frac * 110)))
    if base == "Posterize":  # bits kept: 0..4 (more bits at higher level), or 4..0 when increasing
        bits = int(frac * 4)
        return float(4 - bits if name != base else bits)
    if base == "Solarize":  # threshold: values at or above it are inverted
        thresh = min(256, int(frac * 256))
        return float(256 - thresh if name != base else thresh)
    if name != base:  # enhance factor away from 1.0 in either direction, never below 0.1
        return max(0.1, 1.0 + sign * (frac * 0.9))
    return frac * 1.8 + 0.1


def _op_of(name: str) -> str:
    base = name.removesuffix("Increasing")
    return base.removesuffix("Rel") if base.startswith("Translate") else base


@dataclass(frozen=True, eq=False)
class RandDraw:
    """One clip's ops: `ops` int32 (n,) ids into OPS, `params` float32 (n,) in each op's units, and the PIL
    resample timm would use per slot (BILINEAR where the op is not geometric)."""

    ops: np.ndarray
    params: np.ndarray
    resample: tuple[int, ...]


def draw(rng: np.random.Generator, spec: RandAugmentSpec, size: int) -> RandDraw:
    """One clip's RandAugment draw for square `size` x `size` frames (timm's translations are fractions of
    the side). Every slot consumes the same numbers whatever it picks, so the stream after this call
    depends only on the spec."""
    names, n = spec.transforms, spec.num_ops
    choice = rng.integers(len(names), size=n)
    applied = rng.random(n) <= spec.prob  # timm skips a slot when random() > prob
    if spec.magnitude_std == math.inf:
        levels = rng.uniform(0.0, spec.magnitude, n)
    elif spec.magnitude_std > 0:
        levels = rng.normal(spec.magnitude, spec.magnitude_std, n)
    else:
        levels = np.full(n, float(spec.magnitude))
    levels = np.clip(levels, 0.0, spec.magnitude_max)
    negate = rng.random(n) > 0.5
    bicubic = rng.random(n) < 0.5  # timm: random.choice((BILINEAR, BICUBIC)) per geometric op
    ops, params, resample = np.zeros(n, np.int32), np.zeros(n, np.float32), []
    for i in range(n):
        op = _op_of(names[choice[i]])
        if applied[i]:
            ops[i] = _ID[op]
            params[i] = level_to_param(names[choice[i]], float(levels[i]), bool(negate[i]), size, spec.translate_pct)
        geo = applied[i] and op in GEOMETRIC and bicubic[i]
        resample.append(int(Image.Resampling.BICUBIC if geo else Image.Resampling.BILINEAR))
    return RandDraw(ops, params, tuple(resample))


def apply_reference(frames: np.ndarray, d: RandDraw, fill: tuple[int, int, int]) -> np.ndarray:
    """uint8 (T, H, W, 3) -> uint8, the draw's ops on every frame with timm's own PIL op functions."""
    from timm.data import auto_augment as aa

    fns = {
        "AutoContrast": aa.auto_contrast, "Equalize": aa.equalize, "Invert": aa.invert, "Rotate": aa.rotate,
        "Posterize": aa.posterize, "Solarize": aa.solarize, "SolarizeAdd": aa.solarize_add, "Color": aa.color,
        "Contrast": aa.contrast, "Brightness": aa.brightness, "Sharpness": aa.sharpness, "ShearX": aa.shear_x,
        "ShearY": aa.shear_y, "TranslateX": aa.translate_x_abs, "TranslateY": aa.translate_y_abs,
    }  # fmt: skip
    out = []
    for frame in frames:
        img = Image.fromarray(frame)
        for op, p, resample in zip(d.ops, d.params, d.resample, strict=True):
            name = OPS[op]
            if name == "Identity":
                continue
            if name == "Posterize" and p == 0:  # Pillow >= 10 refuses 0 bits, which older Pillow made black
                img = Image.new(img.mode, img.size)
                continue
            arg = int(p) if name in ("Posterize", "Solarize", "SolarizeAdd") else float(p)
            args = () if name in ("AutoContrast", "Equalize", "Invert") else (arg,)
            img = fns[name](img, *args, fillcolor=tuple(fill), resample=resample)
        out.append(np.asarray(img))
    return np.stack(out)


# --- DALI ---------------------------------------------------------------------------------------------
# Every helper takes and returns a uint8 FHWC DataNode; `p` is the slot's scalar float32 parameter.
# PIL truncates (blends, bilinear samples) and rounds (3x3 filters); each op rounds to uint8 like PIL.


def _dali() -> tuple[Any, Any, Any]:
    """DALI's fn, types and math modules, imported on first use: the PIL path runs without DALI."""
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    return fn, types, dmath


def _u8(x: Any) -> Any:
    fn, types, _ = _dali()
    return fn.cast(x, dtype=types.UINT8)


def _blend(degenerate: Any, x: Any, factor: Any) -> Any:
    """PIL's Image.blend(degenerate, x, factor): float32 d + f * (x - d), truncated and clipped (the cast
    saturates); `degenerate` None is PIL's black image, two passes over the clip fewer."""
    _, _, dmath = _dali()
    if degenerate is None:
        return _u8(dmath.floor(factor * x))
    return _u8(dmath.floor(degenerate + factor * (x - degenerate)))


def _luma(x: Any) -> Any:
    """PIL's convert("L"): (F, H, W, 1) int32, 16-bit fixed-point weights rounded."""
    fn, types, _ = _dali()
    xi = fn.cast(x, dtype=types.INT32)
    return (xi[:, :, :, 0:1] * 19595 + xi[:, :, :, 1:2] * 38470 + xi[:, :, :, 2:3] * 7471 + 32768) // 65536


def _contrast(x: Any, p: Any) -> Any:
    fn, _, _ = _dali()
    luma = _luma(x)
    total = fn.reductions.sum(luma, axes=[1, 2], keep_dims=True)
    pixels = x.shape()[1] * x.shape()[2]
    mean = (2 * total + pixels) // (2 * pixels)  # int(mean + 0.5) as PIL, per frame
    return _blend(mean, x, p)


def _sharpness(x: Any, p: Any) -> Any:
    """PIL blends with its SMOOTH filter, which leaves the 1-pixel border as it was."""
    fn, types, dmath = _dali()
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13
    smooth = dmath.floor(fn.filter(x, kernel, mode="valid", dtype=types.FLOAT) + 0.5)
    inner = _blend(smooth, x[:, 1:-1, 1:-1], p)
    rows = fn.cat(x[:, 1:-1, 0:1], inner, x[:, 1:-1, -1:], axis=2)
    return fn.cat(x[:, 0:1], rows, x[:, -1:], axis=1)


def _autocontrast(x: Any) -> Any:
    """Per frame and channel, PIL's table int(v * scale + offset) in double precision, as PIL computes it."""
    fn, types, dmath = _dali()
    lo = fn.cast(fn.reductions.min(x, axes=[1, 2], keep_dims=True), dtype=types.FLOAT64)
    hi = fn.cast(fn.reductions.max(x, axes=[1, 2], keep_dims=True), dtype=types.FLOAT64)
    spread = hi > lo  # PIL leaves a constant channel as it is: scale 1, offset 0
    scale = 255.0 / (hi - lo + (1 - spread)) * spread + (1 - spread)
    offset = -lo * scale * spread
    return _u8(dmath.floor(fn.cast(x, dtype=types.FLOAT64) * scale + offset))  # the cast clips like PIL


def _equalize(x: Any) -> Any:
    """PIL's equalize maps v to about below(v) / step, below(v) = pixels under v, step = below(top) // 255,
    per frame and channel. DALI has no histogram or gather operator, only `fn.equalize` (OpenCV's table:
    pixels up to and including v). Run on 255 - x it counts the pixels above v, so 255 minus it is
    round(255 * below(v) / below(top)); rescaled by PIL's step it lands within 1 level of PIL, where OpenCV's
    table alone is up to 134 levels off next to a translate's fill."""
    fn, types, _ = _dali()
    top = fn.reductions.max(x, axes=[1, 2], keep_dims=True)
    at_top = fn.reductions.sum(fn.cast(x == top, dtype=types.INT32), axes=[1, 2], keep_dims=True)
    below = x.shape()[1] * x.shape()[2] - at_top
    step = below // 255
    keep = step == 0  # PIL leaves a channel with a single value or under 255 pixels below the top as it is
    stretch = fn.cast(below, dtype=types.FLOAT) / (255 * step + keep)
    counted = 255 - fn.equalize(_u8(255 - x))
    return _u8(counted * stretch * (1 - keep) + keep * x)  # the cast rounds to nearest


def _posterize(x: Any, p: Any) -> Any:
    fn, types, _ = _dali()
    masks = [256 - 2 ** (8 - bits) for bits in range(9)]  # keep the top `bits` bits
    mask = fn.lookup_table(fn.cast(p, dtype=types.INT32), keys=list(range(9)), values=masks, dtype=types.UINT8)
    return x & mask


def _solarize(x: Any, p: Any) -> Any:
    fn, types, _ = _dali()
    xi = fn.cast(x, dtype=types.INT32)
    return _u8(xi + (xi >= p) * (255 - 2 * xi))


def _solarize_add(x: Any, p: Any) -> Any:
    fn, types, dmath = _dali()
    xi = fn.cast(x, dtype=types.INT32)
    return _u8(dmath.min(xi + (xi < 128) * fn.cast(p, dtype=types.INT32), 255))


def _warp(x: Any, matrix: Any, fill: tuple[int, int, int]) -> Any:
    """PIL's affine transform with `matrix` mapping output to input pixels (pixel centres at +0.5): bilinear
    with clamped neighbours where the sample point lies inside the image, `fill` elsewhere. A 1-channel
    nearest-neighbour warp with fill 0 marks exactly the points inside; DALI's fill is one scalar, not RGB."""
    fn, types, dmath = _dali()
    sampled = dmath.floor(fn.warp_affine(x, matrix=matrix, dtype=types.FLOAT))  # no fill value: clamp
    ones = fn.cast(x[:, :, :, 0:1] >= 0, dtype=types.UINT8)
    inside = fn.warp_affine(ones, matrix=matrix, fill_value=0, interp_type=types.INTERP_NN)
    fill_rgb = np.asarray(fill, np.float32)  # DataNode first: numpy would broadcast over the node itself
    return _u8(inside * (sampled - fill_rgb) + fill_rgb)


def _rotation(x: Any, degrees: Any) -> Any:
    """PIL's rotate: counter-clockwise about the image centre (W / 2, H / 2)."""
    fn, types, dmath = _dali()
    shape = fn.cast(x.shape(), dtype=types.FLOAT)
    cx, cy = shape[2] * 0.5, shape[1] * 0.5
    rad = degrees * (math.pi / 180.0)
    c, s = dmath.cos(rad), dmath.sin(rad)
    m = fn.stack(c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy)
    return fn.reshape(m, shape=[2, 3])


def _shift(p: Any, at: tuple[int, int]) -> Any:
    """Identity matrix with `p` at row/column `at` (shear factor or translation in pixels)."""
    unit = np.zeros((2, 3), np.float32)
    unit[at] = 1.0
    return p * unit + np.eye(2, 3, dtype=np.float32)


def dali_apply(frames: Any, ops: Any, params: Any, fill: tuple[int, int, int], *, n: int) -> Any:
    """Inside a `pipeline_def(enable_conditionals=True)`: the clip's n ops on uint8 FHWC `frames` (CPU or
    GPU), from `ops` (int32) and `params` (float32) fed per sample with shape (n,) on the CPU."""
    x = frames
    for i in range(n):
        op, p = ops[i], params[i]
        if op == _ID["AutoContrast"]:
            x = _autocontrast(x)
        elif op == _ID["Equalize"]:
            x = _equalize(x)
        elif op == _ID["Invert"]:
            x = _u8(255 - x)
        elif op == _ID["Rotate"]:
            x = _warp(x, _rotation(x, p), fill)
        elif op == _ID["Posterize"]:
            x = _posterize(x, p)
        elif op == _ID["Solarize"]:
            x = _solarize(x, p)
        elif op == _ID["SolarizeAdd"]:
            x = _solarize_add(x, p)
        elif op == _ID["Color"]:
            x = _blend(_luma(x), x, p)
        elif op == _ID["Contrast"]:
            x = _contrast(x, p)
        elif op == _ID["Brightness"]:
            x = _blend(None, x, p)
        elif op == _ID["Sharpness"]:
            x = _sharpness(x, p)
        elif op == _ID["ShearX"]:
            x = _warp(x, _shift(p, (0, 1)), fill)
        elif op == _ID["ShearY"]:
            x = _warp(x, _shift(p, (1, 0)), fill)
        elif op == _ID["TranslateX"]:
            x = _warp(x, _shift(p, (0, 2)), fill)
        elif op == _ID["TranslateY"]:
            x = _warp(x, _shift(p, (1, 2)), fill)
    return x
