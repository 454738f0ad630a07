"""Per-step training metrics, torchtitan-style: data-wait and step seconds, clips/s, achieved TFLOP/s and
model FLOPs utilisation (where the device's peak is known), peak memory; written to `metrics.jsonl`
(exact, for resume checks) and MLflow.
"""

from __future__ import annotations

import json
import math
import re
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from s4v.config import Config
from s4v.memory.perf import mfu, train_step_flops
from s4v.memory.step import Workload
from s4v.models.retrieval import symmetric_info_nce
from s4v.train.tracking import Tracker


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since the previous call, so each step's record holds its own peak (the first one also the
    job's set-up): allocated accelerator memory, or on CPU this process's resident set. Linux keeps the resident
    high-water mark and resets it on request; where it cannot, the process's peak so far is returned."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        return peak / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the high-water mark to the current size
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) / 1024


class StepLog:
    """Rank 0's per-step record: `metrics.jsonl` (exact losses, for resume checks) and MLflow."""

    def __init__(self, path: Path, tracker: Tracker, every: int, active: bool) -> None:
        self.path, self.tracker, self.every, self.active = path, tracker, max(1, every), active

    def truncate(self, step: int) -> None:
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
            self.path.write_text("".join(f"{line}\n" for line in kept))

    def write(self, step: int, record: dict[str, float]) -> None:
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **record}) + "\n")
        if step % self.every == 0:  # a skipped step's non-finite loss stays in metrics.jsonl only
            # A sweep's per-member keys (`loss/<member>`) go to the members' own MLflow runs instead.
            finite = {
                k: v for k, v in record.items() if k != "epoch" and "/" not in k and v is not None and math.isfinite(v)
            }
            self.tracker.log_metrics({f"train/{k}": v for k, v in finite.items()}, step)


def step_record(
    epoch: int, loss: float, lr: float, step_s: float, wait_s: float, clips: int, flops: float, peak: float | None,
    device: torch.device,
) -> dict[str, Any]:  # fmt: skip
    """One optimizer step's line of metrics.jsonl: `clips` and `flops` are the step's (this rank's FLOPs)."""
    return {
        "epoch": epoch,
        "loss": loss,
        "lr": lr,
        "step_s": step_s,
        "data_wait_s": wait_s,
        "clips_per_s": clips / step_s,
        "tflops": flops / step_s / 1e12,
        "mfu": mfu(flops, step_s, peak),
        "peak_mem_mb": peak_memory_mb(device),
    }


def postfix(record: dict[str, Any]) -> dict[str, str]:
    """What the progress bar shows of a step's record."""
    shown = {"loss": f"{record['loss']:.4f}", "lr": f"{record['lr']:.2e}", "clips_s": f"{record['clips_per_s']:.1f}"}
    shown["wait_s"] = f"{record['data_wait_s']:.2f}"
    return shown if record["mfu"] is None else {**shown, "mfu": f"{record['mfu']:.1%}"}


class StepTimer:
    """Wall time of the optimizer step in progress and how much of it went to waiting for data."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = time.perf_counter()
        self.data_wait = 0.0

    def batches(self, batches: Iterable[Any]) -> Iterator[Any]:
        """`batches`, timing how long each one takes to arrive."""
        it = iter(batches)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.data_wait += time.perf_counter() - t0
            yield batch

    def lap(self) -> tuple[float, float]:
        """(step seconds, data-wait seconds) since the last lap; starts the next step's clock."""
        if self.device.type == "cuda":  # the step's kernels must have finished to be timed
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        step, wait = now - self.start, self.data_wait
        self.start, self.data_wait = now, 0.0
        return step, wait


def flops_per_micro_batch(cfg: Config, model_factory: Callable[[torch.device], torch.nn.Module]) -> float:
    """FLOPs one rank executes for one micro-batch (forward + backward), counted on a meta-device copy
    of the model built by `model_factory(device)` (no memory; seconds even for ViT-E). A micro-batch of
    `data.batch_size` videos feeds the model `data.num_repeats` clips of each."""
    data, b = cfg.data, cfg.data.batch_size * cfg.data.num_repeats

    def inputs(device: torch.device) -> tuple[torch.Tensor, ...]:
        video = torch.empty(b, data.num_frames, 3, data.image_size, data.image_size, device=device)
        if cfg.model.task == "retrieval":
            return video, torch.zeros(b, cfg.model.text_length, dtype=torch.long, device=device)
        return video, torch.zeros(b, dtype=torch.long, device=device)

    def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if cfg.model.task == "retrieval":
            return symmetric_info_nce(model(*batch))
        logits = model(batch[0])  # a sweep's (K, B, classes): K members' losses, summed
        return F.cross_entropy(logits.flatten(0, -2), batch[1].repeat(logits.numel() // logits.shape[-1] // b))

    return train_step_flops(Workload("train", model_factory, inputs, loss))
