"""Accounting of a training step: its memory, the same step accounted on meta tensors or measured on CUDA, and
its FLOPs (`s4v.memory.perf`: TFLOP/s and MFU).

`account_step(workload, precision, attention)` (no allocation), `measure_cuda_step(...)` (GPU only),
`lower_bound(...)` (analytic, Side4Video); `s4v.memory.tables` holds the paper's Tables 2, 3, 9 and
`s4v.memory.plan` the `s4v plan` command.
"""

from s4v.memory.analytic import lower_bound, side_shape
from s4v.memory.runtime import GpuRuntime
from s4v.memory.step import PRECISIONS, Precision, StepMemory, Workload, account_step, measure_cuda_step
from s4v.memory.tracker import LiveMemory, SavedTensors

__all__ = [
    "PRECISIONS",
    "GpuRuntime",
    "LiveMemory",
    "Precision",
    "SavedTensors",
    "StepMemory",
    "Workload",
    "account_step",
    "lower_bound",
    "measure_cuda_step",
    "side_shape",
]
