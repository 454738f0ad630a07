"""Training metrics: data wait is the time spent waiting for batches, FLOPs are counted for the step."""

from __future__ import annotations

import time

import pytest
import torch

from s4v.config import load_config
from s4v.memory.perf import mfu, peak_flops
from s4v.train.build import build_model
from s4v.train.metrics import StepTimer, flops_per_micro_batch, peak_memory_mb


def test_step_timer_splits_data_wait_from_the_step() -> None:
    timer = StepTimer(torch.device("cpu"))

    def slow_batches():
        for i in range(2):
            time.sleep(0.05)
            yield i

    for _ in timer.batches(slow_batches()):
        time.sleep(0.02)  # "compute"
    step, wait = timer.lap()
    assert 0.1 <= wait < step and step >= 0.14
    assert timer.lap()[1] == 0.0  # the next step starts from zero


@pytest.mark.parametrize("task", ["recognition", "retrieval"])
def test_counted_flops_grow_linearly_with_the_micro_batch(task: str) -> None:
    preset = {"recognition": "tiny", "retrieval": "tiny-retrieval"}[task]

    def flops(batch: int) -> float:
        cfg = load_config(None, [f"model.task={task}", f"model.preset={preset}", f"data.batch_size={batch}"])
        return flops_per_micro_batch(cfg, lambda device: build_model(cfg, 5, device))

    one, two = flops(1), flops(2)
    assert one > 1e8  # a tiny tower's clip is still ~0.1 GFLOP forward and backward
    if task == "recognition":  # every op is per video
        assert two == pytest.approx(2 * one, rel=1e-9)
    else:  # plus the (batch x batch) similarity of the contrastive loss
        assert 2 * one < two < 2.1 * one


def test_mfu_is_only_reported_against_a_known_peak() -> None:
    assert peak_flops(torch.device("cpu"), torch.bfloat16) is None
    assert mfu(1e12, 1.0, None) is None
    assert mfu(1e12, 2.0, 1e12) == 0.5


def test_peak_memory_is_the_peak_since_the_previous_call() -> None:
    """Each step's record holds its own peak: 400 MB allocated and freed after one call show in the next call's
    figure, and no longer in the one after."""
    device = torch.device("cpu")
    peak_memory_mb(device)
    big = torch.ones(100 * 2**20)  # 400 MiB, written so that its pages are resident
    del big
    with_big = peak_memory_mb(device)
    after = peak_memory_mb(device)
    assert with_big - after > 300, (with_big, after)
