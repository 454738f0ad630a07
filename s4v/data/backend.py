"""Which decoder a loader uses: DALI (NVDEC on GPU, libavcodec threads on CPU) or PyAV worker processes."""

from __future__ import annotations

from pathlib import Path

import torch

from s4v.core.errors import UserError
from s4v.data.config import DataConfig
from s4v.data.dali import CPU_CODECS
from s4v.data.records import VideoRecord


def resolve_backend(cfg: DataConfig, records: list[VideoRecord]) -> str:
    """`auto`: DALI (NVDEC) when batches go to a GPU, else PyAV worker processes.

    On CPU, DALI's decoder is as fast as PyAV's (benchmarks/decode.py) but it runs in the training
    process, where torch's OpenMP threads spin against its decoder threads (2 cores: 450 clips/s alone,
    30-70 beside a torch model); PyAV workers are separate processes. `backend="dali"` on CPU is still
    available for VP8/VP9/MJPEG and is refused for other codecs.
    """
    on_gpu = torch.device(cfg.device).type == "cuda"
    frame_dirs = bool(records) and Path(records[0].path).is_dir()
    if cfg.backend == "auto":
        return "dali" if on_gpu and not frame_dirs and _dali_available() else "pyav"
    if cfg.backend == "dali" and records and not on_gpu:
        codec = "frame folder" if frame_dirs else _codec(records[0].path)
        if codec is not None and codec not in CPU_CODECS:
            raise UserError(
                f"DALI's CPU decoder cannot read {codec} ({records[0].path}); "
                "use backend='pyav' or device='cuda' (NVDEC)"
            )
    return cfg.backend


def _dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def _codec(path: str) -> str | None:
    import av

    try:
        with av.open(path) as c:
            return c.streams.video[0].codec_context.name
    except Exception:
        return None
