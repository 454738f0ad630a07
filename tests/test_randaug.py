"""RandAugment draws against timm's sampling, and the DALI ops against timm's PIL ops (`apply_reference`)."""

from __future__ import annotations

import dataclasses
import functools
import random
from typing import Any

import numpy as np
import pytest
from PIL import Image

from s4v.core.errors import UserError
from s4v.data import randaug

SSV2 = "rand-m7-n4-mstd0.5-inc1"  # Table 12
FILL = (123, 117, 104)  # CLIP mean x 255, timm's img_mean
BILINEAR = int(Image.Resampling.BILINEAR)
EXACT = (0, 0.0)
# Largest and mean |DALI - PIL| per op, in 0..255 levels, on the textured clip below.
TOLERANCE = {
    **dict.fromkeys(["Identity", "Invert", "Posterize", "Solarize", "SolarizeAdd"], EXACT),  # integer maths
    "AutoContrast": EXACT,  # PIL's table computed in double precision, as PIL does
    # PIL's integer luma and rounded mean, its SMOOTH filter (rounded, border kept), float32 blend, truncation
    **dict.fromkeys(["Color", "Contrast", "Brightness", "Sharpness"], EXACT),
    # DALI has no histogram: OpenCV's table, counted from the top and rescaled to PIL's step (measured max 1,
    # mean <= 0.28); OpenCV's table alone is off by up to 134 levels next to a translate's fill.
    "Equalize": (1, 0.35),
    # Same sample points, clamping and fill as PIL; float32 vs double coordinates flip PIL's truncation where
    # the exact value is an integer (measured max 1, mean <= 0.10, the largest for round shifts like -9.2).
    **dict.fromkeys(sorted(randaug.GEOMETRIC), (1, 0.15)),
}
CASES = [
    *[(name, 0.0) for name in ("Identity", "AutoContrast", "Equalize", "Invert")],
    *[("Posterize", b) for b in (0, 1, 2, 3, 4)],
    *[("Solarize", t) for t in (0, 77, 179, 256)],
    *[("SolarizeAdd", a) for a in (0, 77, 110)],
    *[(name, f) for name in ("Color", "Contrast", "Brightness", "Sharpness") for f in (0.1, 0.37, 1.0, 1.63, 1.9)],
    *[("Rotate", d) for d in (21.4, -17.3, 0.0)],
    *[("ShearX", s) for s in (0.21, -0.3)],
    *[("ShearY", s) for s in (-0.17, 0.25)],
    *[("TranslateX", t) for t in (30.1, -13.37)],
    *[("TranslateY", t) for t in (-9.2, 21.7)],
]


def _clip(frames: int = 3, h: int = 80, w: int = 96, seed: int = 0) -> np.ndarray:
    """Natural-looking uint8 frames: smooth shading, hard edges (a checkerboard), noise; each frame moves."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = []
    for t in range(frames):
        r = 128 + 100 * np.sin(x / 9 + t) * np.cos(y / 13)
        g = 255 * (x + 2 * y + 7 * t) / (w + 2 * h + 7 * frames)
        b = np.where((x // 12 + y // 10 + t) % 2 == 0, 200.0, 40.0)
        out.append(np.stack([r, g, b], -1) + rng.normal(0, 12, (h, w, 3)))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _single(name: str, param: float) -> randaug.RandDraw:
    return randaug.RandDraw(np.array([randaug.OPS.index(name)], np.int32), np.array([param], np.float32), (BILINEAR,))


@functools.cache
def _pipe(n: int) -> Any:
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=64, num_threads=1, device_id=None, enable_conditionals=True, prefetch_queue_depth=1)
    def graph():
        x = fn.external_source(name="x", layout="FHWC")
        ops, params = fn.external_source(name="ops"), fn.external_source(name="params")
        return randaug.dali_apply(x, ops, params, FILL, n=n)

    pipe = graph()
    pipe.build()
    return pipe


def _dali(clips: list[np.ndarray], draws: list[randaug.RandDraw]) -> list[np.ndarray]:
    """One batch through a CPU pipeline, every sample with its own draw (so every branch merges at once)."""
    pipe = _pipe(len(draws[0].ops))
    pipe.feed_input("x", clips)
    pipe.feed_input("ops", [d.ops for d in draws])
    pipe.feed_input("params", [d.params for d in draws])
    (out,) = pipe.run()
    return [np.asarray(out[i]) for i in range(len(clips))]


def _diff(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    d = np.abs(a.astype(np.int32) - b.astype(np.int32))
    return int(d.max()), float(d.mean())


@pytest.fixture(scope="module")
def per_op() -> dict[str, tuple[int, float]]:
    """(max, mean) |DALI - PIL| per case, keyed "op(param)", all in one DALI batch; two extra inputs:
    AutoContrast with a constant channel (PIL leaves it) and Equalize after a translate (fill pixels)."""
    clip = _clip()
    flat = clip.copy()
    flat[..., 2] = 77
    shifted = randaug.apply_reference(clip, _single("TranslateX", 30.1), FILL)
    labels = [*_ids(CASES), "AutoContrast flat channel", "Equalize after fill"]
    cases = [*CASES, ("AutoContrast", 0.0), ("Equalize", 0.0)]
    clips = [clip] * len(CASES) + [flat, shifted]
    draws = [_single(*c) for c in cases]
    refs = [randaug.apply_reference(x, d, FILL) for x, d in zip(clips, draws, strict=True)]
    return {k: _diff(o, r) for k, o, r in zip(labels, _dali(clips, draws), refs, strict=True)}


def _ids(cases: list[tuple[str, float]]) -> list[str]:
    return [f"{name}({param:g})" for name, param in cases]


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_dali_op_matches_timm(per_op, case):
    worst, mean = per_op[_ids([case])[0]]
    tol_max, tol_mean = TOLERANCE[case[0]]
    assert worst <= tol_max and mean <= tol_mean, f"{case}: max {worst}, mean {mean:.4f}"


def test_dali_special_inputs(per_op):
    assert per_op["AutoContrast flat channel"] == EXACT
    worst, mean = per_op["Equalize after fill"]
    assert worst <= 1 and mean <= TOLERANCE["Equalize"][1]


def test_every_frame_gets_the_same_op():
    """A 3-frame clip whose frames differ: each output frame is what that frame alone gets."""
    clip = _clip(seed=1)
    assert not np.array_equal(clip[0], clip[1])
    d = randaug.RandDraw(
        np.array([randaug.OPS.index(n) for n in ("TranslateX", "Contrast", "Equalize", "Rotate")], np.int32),
        np.array([11.3, 1.45, 0.0, -12.0], np.float32),
        (BILINEAR,) * 4,
    )
    whole, *alone = _dali([clip, *[clip[i : i + 1] for i in range(3)]], [d] * 4)
    ref = randaug.apply_reference(clip, d, FILL)
    for i in range(3):
        np.testing.assert_array_equal(whole[i], alone[i][0])
        np.testing.assert_array_equal(ref[i], randaug.apply_reference(clip[i : i + 1], d, FILL)[0])


def test_slots_compose_in_order():
    """Exact ops only, so the composition must be exact: the same ops in two orders give two results."""
    names = ("SolarizeAdd", "Invert", "Contrast", "Posterize")
    ids = np.array([randaug.OPS.index(n) for n in names], np.int32)
    params = np.array([60, 0, 1.6, 3], np.float32)
    draws = [
        randaug.RandDraw(ids, params, (BILINEAR,) * 4),
        randaug.RandDraw(ids[[1, 0, 2, 3]], params[[1, 0, 2, 3]], (BILINEAR,) * 4),
    ]
    clip = _clip()
    outs = _dali([clip, clip], draws)
    refs = [randaug.apply_reference(clip, d, FILL) for d in draws]
    for out, ref in zip(outs, refs, strict=True):
        np.testing.assert_array_equal(out, ref)
    assert not np.array_equal(refs[0], refs[1])


def test_recipe_draws_match_reference():
    """Table 12's recipe end to end (bilinear forced): per-op differences stay small after composition."""
    spec = randaug.RandAugmentSpec.parse(SSV2)
    draws = [
        dataclasses.replace(randaug.draw(np.random.default_rng(s), spec, 96), resample=(BILINEAR,) * 4)
        for s in range(24)
    ]
    clip = _clip(h=96)
    for d, out in zip(draws, _dali([clip] * len(draws), draws), strict=True):
        diff = np.abs(out.astype(np.int32) - randaug.apply_reference(clip, d, FILL))
        assert diff.mean() <= 0.35 and (diff > 1).mean() <= 1e-3, [randaug.OPS[k] for k in d.ops]


def test_parse_matches_timm():
    from timm.data.auto_augment import rand_augment_transform

    for text in (SSV2, "rand-m9-n2-mstd101", "rand-m5-n3-p0.3-mmax20", "rand-m10"):
        spec, t = randaug.RandAugmentSpec.parse(text), rand_augment_transform(text, {})
        op = t.ops[0]
        assert (spec.num_ops, spec.prob, spec.magnitude) == (t.num_layers, op.prob, op.magnitude)
        assert spec.magnitude_std == op.magnitude_std and spec.magnitude_max == (op.magnitude_max or 10)
        assert spec.transforms == tuple(o.name for o in t.ops)
    assert randaug.RandAugmentSpec.parse(SSV2) == randaug.RandAugmentSpec(7, 4, 0.5, 10.0, 0.5, True)


@pytest.mark.parametrize("text", ["rand-m7-x3", "augmix-m3", "rand-mfoo", "rand-p1.5", "rand-tweights", "rand-n2.5"])
def test_parse_rejects(text):
    with pytest.raises(UserError, match="RandAugment spec") as e:
        randaug.RandAugmentSpec.parse(text)
    assert "\n" not in str(e.value)


def test_level_to_param_is_timms(monkeypatch):
    """Every op of both op sets at magnitudes 0..10 (and 12.5, as mmax allows), either sign, equals timm's
    level function (translations: its fraction of the image size, in pixels)."""
    from timm.data import auto_augment as aa

    size, names = 224, set(aa._RAND_TRANSFORMS) | set(aa._RAND_INCREASING_TRANSFORMS)
    for negate in (False, True):
        monkeypatch.setattr(aa.random, "random", lambda negate=negate: 0.9 if negate else 0.1)  # > 0.5 negates
        for name in sorted(names):
            for level in [*np.linspace(0, 10, 41), 7.3, 12.5]:
                args = aa.LEVEL_TO_ARG[name](level, {"translate_pct": 0.45}) if aa.LEVEL_TO_ARG[name] else (0.0,)
                want = args[0] * size if name.startswith("Translate") else float(args[0])
                assert randaug.level_to_param(name, level, negate, size) == want, (name, level, negate)


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.union1d(a, b)
    cdf = [np.searchsorted(np.sort(s), grid, side="right") / len(s) for s in (a, b)]
    return float(np.abs(cdf[0] - cdf[1]).max())


def _timm_slots(text: str, clips: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Op ids and params of every slot timm's RandAugment fills over `clips` images (skipped: Identity)."""
    from timm.data.auto_augment import rand_augment_transform

    t, picked = rand_augment_transform(text, {"translate_pct": 0.45}), []

    def record(name: str, img: None, *args: float, **_: object) -> None:
        op = name.removesuffix("Increasing").removesuffix("Rel")
        picked.append((randaug.OPS.index(op), args[0] * size if name.startswith("Translate") else (args or (0.0,))[0]))
        return img

    for op in t.ops:
        op.aug_fn = functools.partial(record, op.name)
    state = random.getstate(), np.random.get_state()
    random.seed(0)
    np.random.seed(0)
    try:
        for _ in range(clips):
            t(None)
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
    picked += [(0, 0.0)] * (clips * t.num_layers - len(picked))
    ids, params = zip(*picked, strict=True)
    return np.array(ids), np.array(params, np.float32)


def test_draw_distribution_is_timms():
    """Fixed seeds, so the bounds (chi-square and KS at p = 0.001) cannot flake."""
    clips, size = 8000, 224
    spec = randaug.RandAugmentSpec.parse(SSV2)
    ours = [randaug.draw(np.random.default_rng([7, i]), spec, size) for i in range(clips)]
    ids, params = np.concatenate([d.ops for d in ours]), np.concatenate([d.params for d in ours])
    timm_ids, timm_params = _timm_slots(SSV2, clips, size)
    k = len(randaug.OPS)
    counts, timm_counts = np.bincount(ids, minlength=k), np.bincount(timm_ids, minlength=k)
    expected = np.array([0.5] + [0.5 / (k - 1)] * (k - 1)) * len(ids)  # uniform choice x apply probability 0.5
    assert ((counts - expected) ** 2 / expected).sum() < 37.7  # chi-square, 15 degrees of freedom
    assert ((counts - timm_counts) ** 2 / (counts + timm_counts)).sum() < 37.7
    for op in range(1, k):
        a, b = params[ids == op], timm_params[timm_ids == op]
        assert _ks(a, b) < 1.95 * np.sqrt((len(a) + len(b)) / (len(a) * len(b))), randaug.OPS[op]
    geometric = np.isin(ids, [randaug.OPS.index(n) for n in randaug.GEOMETRIC])
    bicubic = np.concatenate([d.resample for d in ours]) == int(Image.Resampling.BICUBIC)
    assert not bicubic[~geometric].any() and abs(bicubic[geometric].mean() - 0.5) < 0.02
    assert not params[ids == 0].any()


def test_draw_is_a_function_of_the_generator():
    spec = randaug.RandAugmentSpec.parse(SSV2)
    state = random.getstate(), np.random.get_state()
    a, b, c = (randaug.draw(np.random.default_rng(s), spec, 224) for s in (3, 3, 4))
    assert random.getstate() == state[0] and np.array_equal(np.random.get_state()[1], state[1][1])  # no globals
    assert np.array_equal(a.ops, b.ops) and np.array_equal(a.params, b.params) and a.resample == b.resample
    assert (a.ops.dtype, a.params.dtype, a.ops.shape) == (np.int32, np.float32, (4,))
    assert not (np.array_equal(a.ops, c.ops) and np.array_equal(a.params, c.params))
