"""Data configuration: one typed dataclass shared by the trainer, the evaluator and the benchmarks.

Enumerated fields are `Literal` types: the config loader (`s4v.config`) checks them when a run config
is read, before any process or loader starts, so they carry no checks of their own here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from s4v.core.errors import UserError

# OpenAI CLIP statistics: every backbone here (CLIP, EVA-CLIP) was pre-trained with them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Annotation layouts: recognition sets, then the retrieval caption sets.
Format = Literal["list", "ssv1", "ssv2", "k400", "msrvtt", "msvd", "vatex"]
Sampling = Literal["segment", "dense"]  # TSN segments (SSv2) | K400-style fixed stride
DecodeBackend = Literal["auto", "dali", "pyav"]
TestCrops = Literal[1, 3]  # centre | both ends + centre of the long side


@dataclass
class DataConfig:
    """Where the videos are, how clips are sampled and augmented, and which decoder runs.

    Relative `train_list` / `val_list` / `class_file` paths are resolved against `root`.
    `flip=None` picks the per-dataset default: on for Kinetics (scene classes), off otherwise, since a
    horizontal flip changes the label of direction classes (SSv1/SSv2 and the synthetic set).
    """

    root: str
    train_list: str = "train.txt"
    val_list: str = "val.txt"
    fmt: Format = "list"
    class_file: str | None = None  # classes.txt / labels json or csv; None: the format's default
    num_frames: int = 8
    image_size: int = 64
    sampling: Sampling = "segment"
    dense_stride: int = 8  # frame step of dense sampling
    batch_size: int = 16  # videos per rank and micro-batch (train: batch_size x num_repeats clips reach the model)
    # Table 12's repeated sampling (2 on SSv1/SSv2): clips made from each decoded training video, same frame
    # indices, each with its own spatial augmentation (s4v.data.loader.finish). Validation ignores it.
    num_repeats: int = 1
    crop_scale: tuple[float, float] = (0.4, 1.0)  # RandomResizedCrop area range
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool | None = None
    randaugment: str | None = None  # timm spec, e.g. "rand-m7-n4-mstd0.5-inc1" (Table 12, SSv2)
    grayscale: float = 0.0  # probability (Table 12: 0.2 for K400 ViT-B)
    backend: DecodeBackend = "auto"
    # Where decoded batches land; "cuda" selects NVDEC under DALI. A plain string, not an enumeration:
    # the trainer narrows "cuda" to the rank's own device ("cuda:1").
    device: str = "cpu"
    num_workers: int = 2  # PyAV worker processes / DALI CPU threads
    test_crops: TestCrops = 1
    test_clips: int = 1
    max_bad_videos: int = 10  # per epoch and rank; more stops the run with an error
    video_ext: str = ".mp4"  # file extension of Kinetics videos (ssv2: .webm)
    # File of video paths to leave out (one a line; `s4v data check` writes one), relative to the working
    # directory; its entries are VideoRecord paths as built, or paths relative to `root`.
    skip_list: str | None = None
    # `video_index.jsonl` that `s4v data check` writes next to its report, relative to the working directory (as
    # skip_list): each unchanged video file's frame count, size and keyframes come from it instead of a demux per read.
    video_index: str | None = None
    # An honest selection split (s4v.data.heldout): the share of each training class kept out of training for
    # selecting runs on (split "heldout"), the same videos at every seed, world size and resume; 0: none. Or a
    # file naming them, read and matched as skip_list. Not both.
    heldout_fraction: float = 0.0
    heldout_list: str | None = None

    def __post_init__(self) -> None:
        # Python callers may pass lists; tuples as the loader makes them, so equal configs compare equal.
        self.crop_scale, self.crop_ratio = tuple(self.crop_scale), tuple(self.crop_ratio)

    @property
    def use_flip(self) -> bool:
        return self.fmt == "k400" if self.flip is None else self.flip


def parse_views(spec: str) -> tuple[int, int]:
    """`--views CROPSxCLIPS` (e.g. "3x2") -> (test_crops, test_clips), checked like the config fields."""
    crops_text, sep, clips_text = spec.lower().partition("x")
    if not (sep and crops_text.isdigit() and clips_text.isdigit()):
        raise UserError(f"--views {spec!r}: expected CROPSxCLIPS, e.g. 3x2")
    crops, clips = int(crops_text), int(clips_text)
    if crops not in get_args(TestCrops):
        raise UserError(f"--views {spec!r}: crops must be one of {', '.join(map(str, get_args(TestCrops)))}")
    if clips < 1:
        raise UserError(f"--views {spec!r}: clips must be at least 1")
    return crops, clips
