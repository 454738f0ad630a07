"""Throughput accounting shared by the training metrics and `benchmarks/throughput.py`: the FLOPs a
training step really executes, counted on the meta device, and the peak of the device it runs on, so
model FLOPs utilisation (MFU) = counted FLOPs / step seconds / peak.

FLOPs here count a multiply-add as 2 (the convention of peak-throughput figures), unlike `s4v info`'s
GFLOPs, which follow the video literature (one multiply-add = 1).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from s4v.memory.step import Workload

# Dense (no sparsity) tensor-core peaks, TFLOP/s, from the vendors' data sheets (SXM parts).
PEAK_TFLOPS: dict[str, dict[torch.dtype, float]] = {
    "A100": {torch.bfloat16: 312.0, torch.float16: 312.0},
    "H100": {torch.bfloat16: 989.0, torch.float16: 989.0},
    "H200": {torch.bfloat16: 989.0, torch.float16: 989.0},
}


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """FLOP/s peak of `device` in `dtype`; None where unknown (CPU, other GPUs, fp32)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for gpu, peaks in PEAK_TFLOPS.items():
        if gpu in name and dtype in peaks:
            return peaks[dtype] * 1e12
    return None


def train_step_flops(workload: Workload) -> float:
    """FLOPs of one forward + backward of `workload`, counted on meta tensors (no memory, no time).

    What the step executes is what is counted: Side4Video's frozen tower runs forward only, adapters'
    frozen blocks also run a backward for their input gradients.
    """
    device = torch.device("meta")
    model = workload.build(device)
    inputs = workload.inputs(device)
    counter = FlopCounterMode(display=False)
    with counter:
        workload.loss(model, inputs).backward()
    return float(counter.get_total_flops())


def mfu(flops_per_step: float, step_seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1]; None where the peak is unknown."""
    if peak is None or step_seconds <= 0:
        return None
    return flops_per_step / step_seconds / peak
