"""Test-wide setup. TRITON_INTERPRET must be set before any Triton kernel module is imported."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")
REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault(
    "MLFLOW_TRACKING_URI", "sqlite:///" + os.path.join(os.environ.get("TMPDIR", "/tmp"), "s4v-test-mlflow.db")
)


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic set (4 classes x 12 videos of 8 frames, with captions), written once per session."""
    out = tmp_path_factory.mktemp("synth")
    args = ["--out", str(out), "--classes", "4", "--videos-per-class", "12", "--frames", "8", "--captions"]
    subprocess.run([sys.executable, "-m", "s4v.cli", "synth", *args], check=True, cwd=REPO, capture_output=True)
    return out


@pytest.fixture(scope="session")
def one_rank_halving(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A static sweep and the same sweep halved (tests/test_halving_train.py), on one rank, trained once per
    session: the halving test and tests/test_ensemble.py both read them."""
    from test_halving_train import _static_and_halving

    return _static_and_halving(synth, tmp_path_factory.mktemp("halving"), 1)


def _shm_buffers() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*")}


@pytest.fixture(scope="session", autouse=True)
def no_shared_memory_left_behind():
    """Every multi-rank run of the suite removes DeepSpeed's /dev/shm all-reduce buffers (66 MB of RAM
    per rank each); a leak fails the session here. Buffers of runs outside the suite are left alone."""
    before = _shm_buffers()
    yield
    left = sorted(_shm_buffers() - before)
    assert not left, f"{len(left)} DeepSpeed shared-memory buffer(s) left in /dev/shm: {', '.join(left)}"
