"""Process-group setup shared by training and evaluation: the same code under the `deepspeed` launcher,
torchrun, or a bare `python` process (which gets a world of one on a loopback rendezvous)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(threads_per_rank: int = 0) -> DistInfo:
    """Initialise deepspeed.comm (NCCL on GPU, gloo on CPU, chosen by the DeepSpeed accelerator).

    A process started without a launcher sets the env:// variables for a world of one itself.
    CPU ranks split the cores between them; with several ranks per host each would otherwise use all
    cores and the host would be oversubscribed.
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name())
    import deepspeed.comm as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    _unlink_shm_buffer(rank)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", world)))
    accel = get_accelerator()
    if accel.device_name() == "cpu":
        device = torch.device("cpu")
        cores = len(os.sched_getaffinity(0))
        torch.set_num_threads(threads_per_rank or max(1, cores // max(1, local_world)))
    else:
        accel.set_device(local_rank)
        device = torch.device(accel.device_name(local_rank))
    return DistInfo(rank, world, local_rank, device)


def _unlink_shm_buffer(rank: int) -> None:
    """Remove this rank's name of DeepSpeed's CPU shared-memory all-reduce buffer.

    DeepSpeed (csrc/cpu/comm/shm.cpp) creates /dev/shm/deepspeed_allreduce_buffer_<uid>_<master addr>_
    <master port>_<rank> (66 MB, when every rank is on one host) and never unlinks it: RAM lost per run.
    Every rank has mapped every peer's buffer once the process group is up, so after a barrier the
    names can go; the mappings live on until the processes exit, however they exit (SIGKILL included).
    """
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    barrier()
    Path(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}").unlink(missing_ok=True)


def barrier() -> None:
    import deepspeed.comm as dist

    if dist.is_initialized():
        dist.barrier()


def shutdown_distributed() -> None:
    """Wait for every rank, then tear the process group down before the interpreter exits.

    Without it a rank that finishes first can leave its peer's communication threads to be destroyed
    at interpreter exit, which aborts that peer ("terminate called without an active exception").
    """
    import torch.distributed as tdist

    if tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()


def all_gather_objects(obj: object) -> list[object]:
    """Every rank's `obj`, in rank order (pickled through the process group; small payloads only)."""
    import torch.distributed as tdist

    if not tdist.is_initialized() or tdist.get_world_size() == 1:
        return [obj]
    out: list[object] = [None] * tdist.get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over ranks of a small tensor (losses for logging, stop and checkpoint votes)."""
    import torch.distributed as tdist

    if not tdist.is_initialized() or tdist.get_world_size() == 1:
        return values
    values = values.clone()
    tdist.all_reduce(values)
    return values


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' rows of a tensor, in rank order; backward hands each rank the summed gradient of its rows.

    Every rank computes the same loss over the gathered batch, so the gradient of the local rows is
    the sum of what each rank's loss sends them; DeepSpeed's mean over ranks then gives exactly the
    gradient of one process holding the whole global batch (mmaction2's `GatherLayer` does the same).
    Ranks may hold different numbers of rows (a skipped bad video): rows are padded for the exchange.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as tdist

        sizes = _row_counts(x)
        ctx.rank, ctx.sizes = tdist.get_rank(), sizes
        return _gather_rows(x, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as tdist

        grad = grad.contiguous()
        tdist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]]


def _row_counts(x: torch.Tensor) -> list[int]:
    import torch.distributed as tdist

    counts = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(tdist.get_world_size())]
    tdist.all_gather(counts, torch.tensor([x.shape[0]], device=x.device))
    return [int(c) for c in counts]


def _gather_rows(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    import torch.distributed as tdist

    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    tdist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Contrastive negatives from the global batch: every rank's rows, gradients flowing to the local ones."""
    import torch.distributed as tdist

    if not tdist.is_initialized() or tdist.get_world_size() == 1:
        return x
    if not x.requires_grad:  # masks and indices
        return _gather_rows(x, _row_counts(x))
    return _GatherWithGrad.apply(x)
