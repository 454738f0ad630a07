"""Stopping cleanly when the cluster asks: SIGTERM (Slurm preemption, requeue, the `deepspeed` launcher
passing on its own SIGTERM) or SIGUSR1 (a warning ahead of the time limit, `sbatch --signal`).

A handler only records the signal; the trainer reads the record after each optimizer step and all ranks
agree through one all-reduce (a signal may reach one rank, or reach them seconds apart: the launcher
terminates its ranks one after the other). They checkpoint that step and exit with EXIT_STOPPED. Every
part of a step, a checkpoint included, must fit the launcher's grace time (30 s before SIGKILL).
"""

from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_STOPPED = 75  # EX_TEMPFAIL (sysexits.h): stopped by a signal after a checkpoint; resume to continue


class StopRequest:
    """Installs handlers for STOP_SIGNALS on creation; `close()` restores the previous ones."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}

    def _handle(self, signum: int, _: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signum
            print(f"[s4v] {signal.Signals(signum).name}: stopping after this optimizer step", flush=True)

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def close(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def ignore_stop_signals() -> None:
    """For data-loader workers: the rank that owns them decides when to stop and then shuts them down
    through their queues (or they exit when it dies); SIGUSR1's default action would kill them, and a
    worker killed by a signal makes torch's DataLoader fail the rank before it can checkpoint."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


class CheckpointClock:
    """Wall-clock checkpoints (`train.ckpt_every_minutes`); each rank's clock feeds the same all-reduce,
    so every rank takes the same decision."""

    def __init__(self, minutes: float) -> None:
        self.period_s = minutes * 60.0
        self.last = time.monotonic()

    @property
    def due(self) -> bool:
        return self.period_s > 0 and time.monotonic() - self.last >= self.period_s

    def reset(self) -> None:
        self.last = time.monotonic()
