"""`s4v.core.progress`: tqdm on a terminal; elsewhere metric lines, no carriage return, every N steps or S seconds."""

from __future__ import annotations

import io

import pytest
from tqdm import tqdm

import s4v.core.progress as progress_module
from s4v.core.progress import LineProgress, progress


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(progress_module, "monotonic", c)
    return c


def _train(bar, clock: Clock, steps: int) -> None:
    """What the trainer does per optimizer step: postfix first, then one update; a step takes 1 s."""
    for _ in range(steps):
        clock.t += 1.0
        bar.set_postfix(loss="2.3012", lr="1.00e-03", clips_s="45.1", wait_s="0.02")
        bar.update(1)


def test_lines_follow_every_steps_and_end_with_the_last_state(clock: Clock) -> None:
    out = io.StringIO()
    with progress(24, "epoch 1", every_steps=5, every_s=1e9, file=out) as bar:
        assert isinstance(bar, LineProgress)
        _train(bar, clock, 12)
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 3  # steps 5 and 10, then step 12 at close
    assert lines[1] == "[s4v] epoch 1 step 10/24 | loss 2.3012 | lr 1.00e-03 | clips/s 45.1 | wait_s 0.02 | eta 0:00:14"
    assert lines[2].startswith("[s4v] epoch 1 step 12/24 | ") and lines[2].endswith("eta 0:00:12")


def test_every_s_prints_whatever_the_step_count(clock: Clock) -> None:
    out = io.StringIO()
    with progress(100, "epoch 2", every_steps=1000, every_s=3.0, file=out) as bar:
        _train(bar, clock, 10)  # a line at 3, 6 and 9 s, then the end
    assert [line.split(" | ")[0] for line in out.getvalue().splitlines()] == [
        f"[s4v] epoch 2 step {n}/100" for n in (3, 6, 9, 10)
    ]


def test_resumed_steps_do_not_count_in_the_rate(clock: Clock) -> None:
    out = io.StringIO()
    bar = progress(24, "epoch 1", initial=20, file=out)  # resumed mid-epoch: 20 steps done before
    clock.t = 2.0
    bar.update(1)  # one step in 2 s: 3 left, 6 s
    bar.close()
    bar.close()  # closing twice prints nothing more
    assert out.getvalue() == "[s4v] epoch 1 step 21/24 | eta 0:00:06\n"


def test_disabled_and_terminal_only_show_nothing_off_a_terminal(clock: Clock, capsys) -> None:
    for enabled in (False, None):
        with progress(3, "videos", unit="video", enabled=enabled) as bar:
            bar.update(3)
            bar.write("error: kept", file=None)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == "error: kept\nerror: kept\n"


def test_default_stream_is_stderr_like_tqdm(clock: Clock, capsys) -> None:
    with progress(2, "probe", unit="video") as bar:
        bar.update(2)
    assert capsys.readouterr().err == "[s4v] probe video 2/2\n"


def test_a_terminal_gets_a_tqdm_bar() -> None:
    term = Terminal()
    for enabled in (True, None):
        with progress(10, "epoch 1", file=term, enabled=enabled) as bar:
            assert isinstance(bar, tqdm)
            bar.set_postfix(loss="2.3012")
            bar.update(4)
    assert "\r" in term.getvalue() and "loss=2.3012" in term.getvalue()
    assert isinstance(progress(10, file=term, enabled=False), LineProgress)
