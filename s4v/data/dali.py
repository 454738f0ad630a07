"""DALI video decoding: NVDEC (`mixed` backend) on GPU, libavcodec threads on CPU.

The loader decides *which* frames to read (sampling, sharding, resume and bad-file handling live in
Python, identical for every backend) and hands DALI the encoded bytes plus explicit frame indices
(`fn.decoders.video(frames=...)`). DALI's CPU decoder supports VP8, VP9 and MJPEG only; everything else
needs the GPU (`device="cuda"`) or the PyAV backend.
"""

from __future__ import annotations

import numpy as np
import torch

CPU_CODECS = ("vp8", "vp9", "mjpeg")  # PyAV codec names; DALI itself is imported lazily


def _build(batch_size: int, num_threads: int, device_id: int | None):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, prefetch_queue_depth=1)
    def video_pipe():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        # GPU-only branch: "mixed" = demux on CPU, NVDEC decode, output in GPU memory.
        return fn.decoders.video(encoded, frames=frames, device="cpu" if device_id is None else "mixed")

    pipe = video_pipe()
    pipe.build()
    return pipe


def _to_torch(tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":  # GPU-only branch: copy the DALI GPU tensor into a torch tensor
        from nvidia.dali.plugin.pytorch import feed_ndarray

        out = torch.empty(tensor.shape(), dtype=torch.uint8, device=device)
        feed_ndarray(tensor, out)
        return out
    return torch.from_numpy(np.array(tensor))


class DaliVideoDecoder:
    """Decodes one batch at a time; a failed batch raises and the pipeline is rebuilt for the next one."""

    def __init__(self, batch_size: int, num_threads: int = 2, device: str = "cpu"):
        self.batch_size, self.num_threads = batch_size, num_threads
        self.device = torch.device(device)
        self.device_id = None if self.device.type == "cpu" else (self.device.index or 0)
        self._pipe = None

    def decode(self, datas: list[bytes], indices: list[np.ndarray]) -> list[torch.Tensor]:
        """uint8 (T, H, W, 3) tensors on `device`, one per video."""
        if not datas:
            return []
        if len(datas) > self.batch_size:
            raise ValueError(f"batch of {len(datas)} > DALI max batch size {self.batch_size}")
        if self._pipe is None:
            self._pipe = _build(self.batch_size, self.num_threads, self.device_id)
        try:
            self._pipe.feed_input("encoded", [np.frombuffer(d, np.uint8) for d in datas])
            self._pipe.feed_input("frames", [np.asarray(i, np.int32) for i in indices])
            (out,) = self._pipe.run()
        except Exception:
            self._pipe = None  # DALI invalidates a pipeline after an error
            raise
        return [_to_torch(out[i], self.device) for i in range(len(out))]


def decode_clips(datas: list[bytes], indices: list[np.ndarray], device: str = "cpu") -> list[np.ndarray]:
    """One-shot decode (tests, `read_clip`, benchmarks): uint8 (T, H, W, 3) numpy arrays."""
    dec = DaliVideoDecoder(batch_size=max(len(datas), 1), device=device)
    return [t.cpu().numpy() for t in dec.decode(datas, indices)]
