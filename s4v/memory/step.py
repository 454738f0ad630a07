"""One training step (forward, backward, optimizer step), accounted on meta tensors or measured on CUDA.

The same `train_step` runs in both places; only the device and how numerics are obtained differ
(real `torch.autocast` on CUDA, `GpuRuntime`'s emulation elsewhere). Accounting never allocates:
ViT-L/14 at batch 16 takes seconds on a laptop. The accounting can also replay what one of N
data-parallel ranks holds (`Parallel`): a sharded frozen tower and DeepSpeed ZeRO partitions.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

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


@dataclass(frozen=True)
class Parallel:
    """What one of `ranks` data-parallel ranks holds, as the accounting replays it.

    shard_frozen: the frozen tower sharded FSDP2-style (`model.shard_frozen`): every frozen parameter split
      on dim 0 over the ranks (padded to ceil(rows / ranks) rows per rank, as FSDP2 pads; the patch and
      position embeddings and norms outside the blocks too), each frozen block all-gathered for its
      forward and freed after it. FSDP2 prefetches the next block's all-gather during the current
      block, so two gathered blocks are held at a time. The tower has no backward: no gather there.
    zero_stage: DeepSpeed ZeRO over the trainable parameters, flattened and split into ceil(P / ranks)
      elements per rank: 1 partitions the optimizer states (fp32 master copy, Adam moments), 2 also the
      gradients (each reduce-scattered into the rank's slice once backward completes it), 3 also the
      weights (each parameter split like a frozen one, plus two gathered side blocks held for the whole
      step: an upper bound of ZeRO-3's per-module gathers; a sweep's members run their blocks one at a
      time, so two of its largest blocks). Communication buckets are not replayed (`s4v plan --reserve`
      is for them).
    """

    ranks: int = 1
    shard_frozen: bool = False
    zero_stage: int = 0

    def __post_init__(self) -> None:
        if self.ranks < 1:
            raise ValueError(f"ranks must be positive, got {self.ranks}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {self.zero_stage}")


SINGLE = Parallel()


def shard_numel(p: Tensor, ranks: int) -> int:
    """Elements of one rank's FSDP2 shard of `p`: ceil(rows / ranks) rows of dim 0."""
    if p.dim() == 0:
        return 1
    return -(-p.shape[0] // ranks) * (p.numel() // p.shape[0])


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


class ZeroAdamW:
    """AdamW as DeepSpeed ZeRO (stage >= 1) runs it on one rank: fp32 master copy and Adam moments of
    the rank's slice of the flattened trainable parameters, whatever the weights' dtype (DeepSpeed keeps
    an fp32 partition in every precision).

    Stage 1 keeps every full gradient until the step; stage >= 2 keeps a slice of the gradients (weights'
    dtype) instead, each parameter's full gradient freed as soon as backward has accumulated it. The
    step reads the slice's gradient in fp32, updates it, and the all-gather of the updated slices
    writes into the weights in place.

    Temporaries as DeepSpeed 0.19 has them (checked against RSS of 2 gloo ranks on CPU):
    `deepspeed/runtime/zero/stage_1_and_2.py` `DeepSpeedZeroOptimizer.copy_grads_in_partition` allocates
    the slice (`grads_in_partition`) at the first reduced gradient of a backward, and `step` flattens it
    (a copy), casts that to fp32, then frees both bf16 copies before the client optimizer runs. s4v's
    client optimizer (`SkippingAdamW`) is `foreach=False`: torch's `_single_tensor_adam` builds
    `denom = exp_avg_sq.sqrt() / c`, two partition-sized fp32 temporaries at once (foreach: one).
    The backward's ipg buckets (2 x reduce_bucket_size) are not replayed: `s4v plan --reserve`.
    """

    def __init__(self, params: list[nn.Parameter], ranks: int, stage: int) -> None:
        self.params = params
        self.part = -(-sum(p.numel() for p in params) // ranks)
        device = params[0].device
        self.master = torch.zeros(self.part, dtype=torch.float32, device=device, requires_grad=True)
        self.inner = torch.optim.AdamW([self.master], lr=1e-3, weight_decay=0.15, foreach=False)
        self.stage = stage
        self.grad_slice: Tensor | None = None  # stage >= 2: from the first reduced gradient to the step
        if stage >= 2:
            for p in params:
                p.register_post_accumulate_grad_hook(self._reduce_scatter)

    def _reduce_scatter(self, p: nn.Parameter) -> None:
        # This rank's share is summed into `grad_slice` in place (no new memory); the full gradient goes.
        if self.grad_slice is None:
            self.grad_slice = torch.zeros(self.part, dtype=p.dtype, device=p.device)
        p.grad = None

    def grad_bytes(self) -> int | None:
        """Bytes of the gradient slice stage >= 2 holds through a backward; None: full gradients (stage 1)."""
        return self.part * self.params[0].element_size() if self.stage >= 2 else None

    def step(self) -> None:
        if self.grad_slice is None:  # stage 1: the reduce-scatter output of the full gradients
            grad = torch.empty_like(self.master)
        else:  # flatten (copy) the slice, cast the copy to fp32, then both bf16 copies go
            flat = self.grad_slice.clone()
            grad = flat.float()
            del flat
            self.grad_slice = None
        self.master.grad = grad
        del grad
        self.inner.step()
        self.master.grad = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def state_tensors(self) -> list[Tensor]:
        states = [t for s in self.inner.state.values() for t in s.values() if isinstance(t, Tensor)]
        return [self.master, *states]


def make_optimizer(
    params: list[nn.Parameter], precision: Precision, parallel: Parallel = SINGLE
) -> torch.optim.Optimizer | MasterAdamW | ZeroAdamW:
    if parallel.zero_stage >= 1:
        return ZeroAdamW(params, parallel.ranks, parallel.zero_stage)
    if precision.master:
        return MasterAdamW(params, lr=1e-3, weight_decay=0.15)
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.15, foreach=True)


def optimizer_tensors(opt: torch.optim.Optimizer | MasterAdamW | ZeroAdamW) -> list[Tensor]:
    if isinstance(opt, MasterAdamW | ZeroAdamW):
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


def _fill_static(
    mem: StepMemory,
    params: list[nn.Parameter],
    trainable: list[nn.Parameter],
    opt,
    frozen_held: list[Tensor] | None = None,
    trainable_held: list[Tensor] | None = None,
) -> None:
    """Bytes of this rank; `*_held`: the shards it holds instead of the full parameters."""
    frozen = [p for p in params if not p.requires_grad]
    mem.frozen_weights = _nbytes(frozen if frozen_held is None else frozen_held)
    mem.trainable_weights = _nbytes(trainable if trainable_held is None else trainable_held)
    grad_bytes = opt.grad_bytes() if isinstance(opt, ZeroAdamW) else None
    mem.grads = _nbytes(trainable) if grad_bytes is None else grad_bytes
    mem.optimizer_states = sum(t.numel() * t.element_size() for t in optimizer_tensors(opt))


def _gather_blocks(blocks: nn.ModuleList) -> list[RemovableHandle]:
    """FSDP2's all-gather of each block around its forward, the next block's prefetched during it."""
    sizes = [sum(p.numel() * p.element_size() for p in b.parameters()) for b in blocks]
    device = next(blocks.parameters()).device
    gathered: dict[int, Tensor] = {}

    def gather(k: int, *_) -> None:
        for j in (k, k + 1):
            if j < len(blocks) and j not in gathered:
                gathered[j] = torch.empty(sizes[j], dtype=torch.uint8, device=device)

    def free(k: int, *_) -> None:
        del gathered[k]

    handles = []
    for k, block in enumerate(blocks):
        handles += [block.register_forward_pre_hook(partial(gather, k)), block.register_forward_hook(partial(free, k))]
    return handles


def _side_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of every side network: the model's one, or each sweep member's (they run one at a time)."""
    # Imported here: s4v.memory.tracker (this package) is read by the kernel benchmark before it picks
    # Triton's interpreter, and the model modules import open_clip, which imports Triton.
    from s4v.models.side import SideNetwork

    return [block for m in model.modules() if isinstance(m, SideNetwork) for block in m.blocks]


def _hold_shards(live: LiveMemory, tensors: list[nn.Parameter], ranks: int) -> list[Tensor]:
    """The rank's shards of `tensors` are allocated; the full tensors are not counted."""
    live.ignore(*tensors)
    return [torch.empty(shard_numel(p, ranks), dtype=p.dtype, device=p.device) for p in tensors]


def account_step(
    workload: Workload,
    precision: Precision | str = "amp",
    attention: AttentionKernel = "flash",
    device: str | torch.device = "meta",
    parallel: Parallel = SINGLE,
) -> StepMemory:
    """Exact bytes of a steady-state training step, without allocating (meta tensors).

    A first step creates the optimizer state; the second is measured: saved-tensor hooks count
    what autograd keeps, `LiveMemory` replays the allocator for the peak. With `parallel`, the bytes
    of one of its ranks (the activations are each rank's own batch).
    """
    precision = PRECISIONS[precision] if isinstance(precision, str) else precision
    device = torch.device(device)
    model, params, trainable = _prepare(workload, device, precision)
    frozen = [p for p in params if not p.requires_grad]
    mem = StepMemory(
        workload.name,
        precision.name,
        attention,
        str(device),
        sum(p.numel() for p in trainable),
        sum(p.numel() for p in frozen),
    )
    live = LiveMemory()
    with live:
        frozen_held = trainable_held = side_gathered = None
        if parallel.shard_frozen:
            frozen_held = _hold_shards(live, frozen, parallel.ranks)
            hooks = _gather_blocks(model.backbone.blocks)
        if parallel.zero_stage >= 3:
            trainable_held = _hold_shards(live, trainable, parallel.ranks)
            largest = max(sum(p.numel() * p.element_size() for p in b.parameters()) for b in _side_blocks(model))
            side_gathered = torch.empty(2 * largest, dtype=torch.uint8, device=device)
        live.track(*params, *model.buffers())
        opt = make_optimizer(trainable, precision, parallel)  # inside: fp32 master copies are allocations too
        inputs = workload.inputs(device)
        live.track(*inputs)
        train_step(workload, model, inputs, opt, precision, attention)
        gc.collect()
        live.reset_peak()
        saved = SavedTensors(exclude=params + list(model.buffers()))
        train_step(workload, model, inputs, opt, precision, attention, saved=saved)
    del side_gathered  # held through both steps
    if parallel.shard_frozen:
        for hook in hooks:
            hook.remove()
    _fill_static(mem, params, trainable, opt, frozen_held, trainable_held)
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
