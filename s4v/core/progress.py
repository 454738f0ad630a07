"""Progress of a long loop: a tqdm bar on a terminal, plain metric lines in a log file.

A tqdm bar redraws itself with carriage returns, which a batch log (Slurm, `| tee`, CI) stores as one
ever-growing line; so where its stream is not a terminal, `progress` returns a `LineProgress` instead,
with the part of tqdm's API the callers use (`update`, `set_postfix`, `write`, `close`, context manager).
It prints one line every `every_steps` updates or `every_s` seconds, whichever comes first (checked at
each update), and the last state at `close`, e.g.

    [s4v] epoch 1 step 12/24 | loss 2.3012 | lr 1.00e-03 | clips/s 45.1 | wait_s 0.02 | eta 0:00:31

The ETA is the remaining count over the rate since the bar started (so a resumed epoch's `initial`
steps do not count as fast ones).
"""

from __future__ import annotations

import sys
from datetime import timedelta
from time import monotonic
from typing import Any, Protocol, TextIO

from tqdm import tqdm

# Postfix keys are Python identifiers; in a log line these read better as the units they stand for.
LABELS = {"clips_s": "clips/s"}


class Progress(Protocol):
    """What `progress` returns: a tqdm bar or a LineProgress."""

    def update(self, n: int = 1) -> Any: ...
    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None: ...
    def write(self, s: str, file: TextIO | None = None) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Progress: ...
    def __exit__(self, *exc: object) -> None: ...


def progress(
    total: int | None,
    desc: str = "",
    initial: int = 0,
    unit: str = "step",
    every_steps: int = 1,
    every_s: float = 30.0,
    enabled: bool | None = True,
    file: TextIO | None = None,
) -> Progress:
    """A progress display on `file` (default: stderr, where tqdm writes): tqdm on a terminal, else lines.

    `enabled=False` shows nothing (but `write` still prints), e.g. on ranks other than 0; `None` (tqdm's
    `disable=None`) shows the bar on a terminal and nothing elsewhere, for a command whose stderr carries
    its own messages.
    """
    stream = sys.stderr if file is None else file  # looked up now: tests and tools swap sys.stderr
    if enabled is not False and _is_terminal(stream):
        return tqdm(total=total, desc=desc, initial=initial, unit=unit, file=stream, dynamic_ncols=True, leave=True)
    return LineProgress(total, desc, initial, unit, every_steps, every_s, stream if enabled else None)


def write(s: str, file: TextIO | None = None) -> None:
    """Print a line without breaking an active tqdm bar (tqdm.write clears and redraws it)."""
    tqdm.write(s, file=file)


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class LineProgress:
    """Plain-line progress reporter (see the module docstring); `stream=None` prints no progress lines."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        initial: int,
        unit: str,
        every_steps: int,
        every_s: float,
        stream: TextIO | None,
    ) -> None:
        if every_steps < 1:
            raise ValueError(f"every_steps must be at least 1, got {every_steps}")
        self.total, self.desc, self.unit, self.stream = total, desc, unit, stream
        self.every_steps, self.every_s = every_steps, every_s
        self.n = self.start_n = self.printed_n = initial
        self.t_start = self.t_printed = monotonic()
        self.postfix: dict[str, Any] = {}
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = monotonic()
        if self.n - self.printed_n >= self.every_steps or now - self.t_printed >= self.every_s:
            self._print(now)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Values shown after the count from the next printed line on (tqdm's signature; `refresh` is moot)."""
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def write(self, s: str, file: TextIO | None = None) -> None:
        print(s, file=sys.stdout if file is None else file, flush=True)

    def close(self) -> None:
        if not self.closed and self.n != self.printed_n:  # the end state, unless it is the last line printed
            self._print(monotonic())
        self.closed = True

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def line(self, now: float) -> str:
        count = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        head = " ".join(part for part in ("[s4v]", self.desc, self.unit, count) if part)
        fields = [f"{LABELS.get(k, k)} {_value(v)}" for k, v in self.postfix.items()]
        done, elapsed = self.n - self.start_n, now - self.t_start
        if self.total is not None and done > 0 and elapsed > 0:
            eta = max(self.total - self.n, 0) * elapsed / done
            fields.append(f"eta {timedelta(seconds=round(eta))}")
        return " | ".join([head, *fields])

    def _print(self, now: float) -> None:
        self.printed_n, self.t_printed = self.n, now
        if self.stream is not None:
            print(self.line(now), file=self.stream, flush=True)
