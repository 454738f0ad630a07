"""One training step (forward, backward, optimizer step), accounted on meta tensors or measured on CUDA.

The same `train_step` runs in both places; only the device and how numerics are obtained differ
(real `torch.autocast` on CUDA, `GpuRuntime`'s emulation elsewhere). Accounting never allocates:
ViT-L/14 at batch 16 takes seconds on a laptop.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from s4v.memory.runtime import AttentionKernel, GpuRuntime
from s4v.memory.tracker import LiveMemory, SavedTensors

GiB = 1024**3


@dataclass(frozen=True)
class Precision:
    """How a step stores weights and computes.

    amp: the paper's reference recipe (`--precision amp`): fp32 weights, CUDA autocast fp16, fp32
         grads and Adam moments (16 bytes per trainable parameter, 4 per frozen one).
    bf16: DeepSpeed bf16: every weight in bf16, fp32 master copy and moments for trainable ones.
    fp32: no mixed precision.
    """

    name: str
    weights: torch.dtype
    autocast: torch.dtype | None
    master: bool


PRECISIONS: dict[str, Precision] = {
    "amp": Precision("amp", torch.float32, torch.float16, master=False),
    "bf16": Precision("bf16", torch.bfloat16, None, master=True),
    "fp32": Precision("fp32", torch.float32, None, master=False),
}


@dataclass
class Workload:
    """A model and the batch one training step consumes.

    `build(device)` returns the model with `requires_grad` already set on exactly the trainable
    parameters; `inputs(device)` the batch; `loss(model, inputs)` the scalar to backpropagate.
    """

    name: str
    build: Callable[[torch.device], nn.Module]
    inputs: Callable[[torch.device], tuple[Tensor, ...]]
    loss: Callable[[nn.Module, tuple[Tensor, ...]], Tensor]


@dataclass
class StepMemory:
    """Bytes of one steady-state training step, by category, plus the allocator-replay peak."""

    workload: str
    precision: str
    attention: str
    device: str
    trainable_params: int
    frozen_params: int
    frozen_weights: int = 0
    trainable_weights: int = 0
    grads: int = 0
    optimizer_states: int = 0
    saved_activations: int = 0
    saved_count: int = 0
    inputs: int = 0
    peak: int = 0  # LiveMemory peak on meta, torch.cuda.max_memory_allocated on CUDA

    @property
    def accounted(self) -> int:
        """Everything alive at the end of the forward pass (the usual peak of a training step)."""
        return (
            self.frozen_weights + self.trainable_weights + self.optimizer_states + self.saved_activations + self.inputs
        )

    def as_dict(self) -> dict:
        return dict(asdict(self), accounted=self.accounted)


class MasterAdamW:
    """AdamW on fp32 master copies of low-precision weights (what DeepSpeed's bf16 optimizer keeps)."""

    def __init__(self, params: list[nn.Parameter], **kwargs) -> None:
        self.params = params
        self.masters = [p.detach().float().requires_grad_() for p in params]
        self.inner = torch.optim.AdamW(self.masters, foreach=True, **kwargs)

    def step(self) -> None:
        for p, m in zip(self.params, self.masters, strict=True):
            m.grad = None if p.grad is None else p.grad.float()
            p.grad = None
        self.inner.step()
        with torch.no_grad():
            for p, m in zip(self.params, self.masters, strict=True):
                p.copy_(m)
        for m in self.masters:
            m.grad = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def state_tensors(self) -> list[Tensor]:
        states = [t for s in self.inner.state.values() for t in s.values() if isinstance(t, Tensor)]
        return self.masters + states


def make_optimizer(params: list[nn.Parameter], precision: Precision) -> torch.optim.Optimizer | MasterAdamW:
    if precision.master:
        return MasterAdamW(params, lr=1e-3, weight_decay=0.15)
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.15, foreach=True)


def optimizer_tensors(opt: torch.optim.Optimizer | MasterAdamW) -> list[Tensor]:
    if isinstance(opt, MasterAdamW):
        return opt.state_tensors()
    return [t for s in opt.state.values() for t in s.values() if isinstance(t, Tensor)]


def train_step(
    workload: Workload,
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    opt,
    precision: Precision,
    attention: AttentionKernel,
    saved: SavedTensors | None = None,
) -> None:
    """Forward (under the precision's numerics), backward, optimizer step, grads dropped."""
    on_cuda = inputs[0].device.type == "cuda"
    emulate = None if on_cuda else precision.autocast
    amp = (
        torch.autocast("cuda", dtype=precision.autocast) if on_cuda and precision.autocast else contextlib.nullcontext()
    )
    with amp, GpuRuntime(attention, emulate), saved if saved is not None else contextlib.nullcontext():
        loss = workload.loss(model, inputs)
    loss.backward()
    del loss
    opt.step()
    opt.zero_grad(set_to_none=True)


def _nbytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = id(t.untyped_storage()) if t.device.type != "meta" else id(t)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def _prepare(workload: Workload, device: torch.device, precision: Precision):
    model = workload.build(device)
    if precision.weights != torch.float32:  # fp32 is the build default (EVL keeps its own fp16 tower)
        model.to(precision.weights)
    model.train()
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError(f"{workload.name}: no trainable parameter")
    return model, params, trainable


def _fill_static(mem: StepMemory, params: list[nn.Parameter], trainable: list[nn.Parameter], opt) -> None:
    frozen = [p for p in params if not p.requires_grad]
    mem.frozen_weights = _nbytes(frozen)
    mem.trainable_weights = _nbytes(trainable)
    mem.grads = sum(p.numel() * p.element_size() for p in trainable)
    mem.optimizer_states = sum(t.numel() * t.element_size() for t in optimizer_tensors(opt))


def account_step(
    workload: Workload,
    precision: Precision | str = "amp",
    attention: AttentionKernel = "flash",
    device: str | torch.device = "meta",
) -> StepMemory:
    """Exact bytes of a steady-state training step, without allocating (meta tensors).

    A first step creates the optimizer state; the second is measured: saved-tensor hooks count
    what autograd keeps, `LiveMemory` replays the allocator for the peak.
    """
    precision = PRECISIONS[precision] if isinstance(precision, str) else precision
    device = torch.device(device)
    model, params, trainable = _prepare(workload, device, precision)
    mem = StepMemory(
        workload.name,
        precision.name,
        attention,
        str(device),
        sum(p.numel() for p in trainable),
        sum(p.numel() for p in params if not p.requires_grad),
    )
    live = LiveMemory()
    with live:
        live.track(*params, *model.buffers())
        opt = make_optimizer(trainable, precision)  # inside: fp32 master copies are allocations too
        inputs = workload.inputs(device)
        live.track(*inputs)
        train_step(workload, model, inputs, opt, precision, attention)
        gc.collect()
        live.reset_peak()
        saved = SavedTensors(exclude=params + list(model.buffers()))
        train_step(workload, model, inputs, opt, precision, attention, saved=saved)
    _fill_static(mem, params, trainable, opt)
    mem.saved_activations, mem.saved_count = saved.nbytes, saved.count
    mem.inputs = _nbytes(inputs)
    mem.peak = live.peak
    return mem


def measure_cuda_step(
    workload: Workload, precision: Precision | str = "amp", attention: AttentionKernel = "flash", steps: int = 3
) -> StepMemory:
    """GPU-only: peak `torch.cuda.max_memory_allocated` over real training steps (after a warm-up step)."""
    precision = PRECISIONS[precision] if isinstance(precision, str) else precision
    device = torch.device("cuda")
    gc.collect()
    torch.cuda.empty_cache()
    model, params, trainable = _prepare(workload, device, precision)
    mem = StepMemory(
        workload.name,
        precision.name,
        attention,
        torch.cuda.get_device_name(),
        sum(p.numel() for p in trainable),
        sum(p.numel() for p in params if not p.requires_grad),
    )
    opt = make_optimizer(trainable, precision)
    inputs = workload.inputs(device)
    train_step(workload, model, inputs, opt, precision, attention)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(steps - 1):
        train_step(workload, model, inputs, opt, precision, attention)
    torch.cuda.synchronize()
    mem.peak = torch.cuda.max_memory_allocated()
    _fill_static(mem, params, trainable, opt)
    mem.inputs = _nbytes(inputs)
    del model, opt, inputs, params, trainable
    gc.collect()
    torch.cuda.empty_cache()
    return mem
