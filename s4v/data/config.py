"""Data configuration: one typed dataclass shared by the trainer, the evaluator and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

# OpenAI CLIP statistics: every backbone here (CLIP, EVA-CLIP) was pre-trained with them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FORMATS = ("list", "ssv1", "ssv2", "k400", "msrvtt", "msvd", "vatex")


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
    fmt: str = "list"  # "list" | "ssv1" | "ssv2" | "k400"; retrieval: "msrvtt" | "msvd" | "vatex"
    class_file: str | None = None  # classes.txt / labels json or csv; None: the format's default
    num_frames: int = 8
    image_size: int = 64
    sampling: str = "segment"  # "segment" (TSN, SSv2) | "dense" (K400-style fixed stride)
    dense_stride: int = 8  # frame step of dense sampling
    batch_size: int = 16
    crop_scale: tuple[float, float] = (0.4, 1.0)  # RandomResizedCrop area range
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool | None = None
    randaugment: str | None = None  # timm spec, e.g. "rand-m7-n4-mstd0.5-inc1" (Table 12, SSv2)
    grayscale: float = 0.0  # probability (Table 12: 0.2 for K400 ViT-B)
    backend: str = "auto"  # "auto" | "dali" | "pyav"
    device: str = "cpu"  # where decoded batches land; "cuda" selects NVDEC under DALI
    num_workers: int = 2  # PyAV worker processes / DALI CPU threads
    test_crops: int = 1  # 1 (centre) or 3 (both ends + centre of the long side)
    test_clips: int = 1
    max_bad_videos: int = 10  # per epoch and rank; more stops the run with an error
    video_ext: str = ".mp4"  # file extension of Kinetics videos (ssv2: .webm)

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {'|'.join(FORMATS)}, got {self.fmt!r}")
        if self.sampling not in ("segment", "dense"):
            raise ValueError(f"sampling must be segment|dense, got {self.sampling!r}")
        if self.backend not in ("auto", "dali", "pyav"):
            raise ValueError(f"backend must be auto|dali|pyav, got {self.backend!r}")
        if self.test_crops not in (1, 3):
            raise ValueError(f"test_crops must be 1 or 3, got {self.test_crops}")
        self.crop_scale, self.crop_ratio = tuple(self.crop_scale), tuple(self.crop_ratio)

    @property
    def use_flip(self) -> bool:
        return self.fmt == "k400" if self.flip is None else self.flip

    @property
    def num_views(self) -> int:
        return self.test_crops * self.test_clips
