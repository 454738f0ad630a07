"""User errors at the entry points: one `error: ...` line on stderr, exit code 2, no traceback, and fast.

The speed is the proof that nothing heavy ran first: the run config, the data root and the `--views`
spec are checked before torch, DeepSpeed, a process group, a loader or a model is loaded.
`--debug` or S4V_DEBUG=1 brings the traceback back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from s4v.config import dump_config, load_config
from s4v.core.errors import one_line

REPO = Path(__file__).resolve().parents[1]
FAST_S = 10.0  # importing torch + DeepSpeed alone takes ~5 s here; a config check takes ~0.2 s


def _run(args: list[str], debug_env: bool = False) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if k != "S4V_DEBUG"}
    if debug_env:
        env["S4V_DEBUG"] = "1"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return r, time.perf_counter() - t0


def _assert_user_error(r: subprocess.CompletedProcess[str], seconds: float, *fragments: str) -> str:
    """Exit 2, exactly one stderr line `error: ...` holding `fragments`, nothing from the training stack."""
    lines = r.stderr.splitlines()
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    assert r.stdout == ""
    output = (r.stdout + r.stderr).lower()
    assert "traceback" not in output and "initializing" not in output and "deepspeed" not in output
    for fragment in fragments:
        assert fragment in lines[0]
    assert seconds < FAST_S, f"{seconds:.1f} s: the error was not raised before the heavy imports"
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `launch/eval.py` reads first from a checkpoint directory: its run config."""
    root = tmp_path_factory.mktemp("ckpt")
    (root / "data").mkdir()
    dump_config(load_config(None, [f"data.root={root / 'data'}"]), root / "config.yaml")
    return root


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "model.task=recogniton",
            "error: model.task: 'recogniton' is not one of 'recognition', 'retrieval' (did you mean 'recognition'?)",
        ),
        ("data.fmt=ssv3", "error: data.fmt: 'ssv3' is not one of 'list', "),
        ("model.kind=sidevideo", "error: model.kind: 'sidevideo' is not one of 'side4video', 'meanpool'"),
    ],
)
def test_train_typo_in_an_enumeration_fails_fast(override: str, expected: str) -> None:
    r, seconds = _run(["launch/train.py", "--config", "configs/synth_tiny.yaml", override, "tracking.enabled=false"])
    assert _assert_user_error(r, seconds).startswith(expected)


def test_train_missing_data_root_and_weights_fail_before_any_process_group(tmp_path: Path) -> None:
    r, seconds = _run(["launch/train.py", f"data.root={tmp_path / 'nope'}", f"train.out_dir={tmp_path / 'run'}"])
    _assert_user_error(r, seconds, "data.root", str(tmp_path / "nope"))
    assert not (tmp_path / "run").exists()
    weights = tmp_path / "ViT-B-16.pt"
    r, seconds = _run(["launch/train.py", f"data.root={tmp_path}", f"model.checkpoint={weights}"])
    _assert_user_error(r, seconds, "model.checkpoint", str(weights), "never downloaded")


def test_train_debug_shows_the_traceback() -> None:
    for args, env in ((["model.task=recogniton", "--debug"], False), (["model.task=recogniton"], True)):
        r, _ = _run(["launch/train.py", *args], debug_env=env)
        assert r.returncode != 0 and "Traceback" in r.stderr
        assert "UserError: model.task: 'recogniton'" in r.stderr


def test_argparse_errors_keep_exit_code_2() -> None:
    r, _ = _run(["launch/train.py", "--no-such-flag"])
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr


def test_eval_missing_checkpoint_dir(tmp_path: Path) -> None:
    r, seconds = _run(["launch/eval.py", "--checkpoint", str(tmp_path / "final")])
    _assert_user_error(r, seconds, "--checkpoint", str(tmp_path / "final"), "no such directory")
    r, seconds = _run(["launch/eval.py", "--checkpoint", str(tmp_path)])
    _assert_user_error(r, seconds, "not a checkpoint directory")


@pytest.mark.parametrize(
    ("views", "expected"),
    [
        ("3by2", "error: --views '3by2': expected CROPSxCLIPS"),
        ("2x1", "error: --views '2x1': crops must be one of 1, 3"),
    ],
)
def test_eval_bad_views_spec(checkpoint_dir: Path, views: str, expected: str) -> None:
    r, seconds = _run(["launch/eval.py", "--checkpoint", str(checkpoint_dir), "--views", views])
    assert _assert_user_error(r, seconds).startswith(expected)
    r, _ = _run(["launch/eval.py", "--checkpoint", str(checkpoint_dir), "--views", views], debug_env=True)
    assert "Traceback" in r.stderr and "UserError" in r.stderr


def test_eval_config_overrides_are_checked(checkpoint_dir: Path) -> None:
    r, seconds = _run(["launch/eval.py", "--checkpoint", str(checkpoint_dir), "data.sampling=dens"])
    _assert_user_error(r, seconds, "data.sampling: 'dens' is not one of 'segment', 'dense' (did you mean 'dense'?)")


def test_s4v_unknown_command() -> None:
    r, seconds = _run(["-m", "s4v.cli", "synht", "--out", "x"])
    _assert_user_error(r, seconds, "unknown command 'synht' (did you mean 'synth'?)")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["plan", "--gpu-mem", "40", "--backbone", "b16", "--layers", "5"], "--layers 5: a side network must read"),
        (["synth", "--out", "unused", "--classes", "3"], "--classes must be even"),
    ],
)
def test_sub_commands_report_user_errors_in_one_line(args: list[str], expected: str) -> None:
    r, seconds = _run(["-m", "s4v.cli", *args])
    _assert_user_error(r, seconds, expected)
    r, _ = _run(["-m", "s4v.cli", *args, "--debug"])  # --debug wherever it stands: the traceback is back
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_one_line_joins_multi_line_messages() -> None:
    message = "checkpoint w.pt does not match the model:\n  missing a\n  unexpected b"
    assert one_line(message) == "checkpoint w.pt does not match the model: missing a; unexpected b"
    assert one_line("first\nsecond") == "first; second" and one_line("plain") == "plain"


def test_config_module_imports_nothing_heavy() -> None:
    code = "import sys, s4v.config; print(sorted(m for m in ('torch', 'open_clip', 'deepspeed') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
