"""Kill-and-resume: a run SIGKILLed mid-epoch resumes from its last checkpoint and reproduces, bitwise on
CPU fp32, the losses of an uninterrupted run (dropout on, so the RNG state must be restored too)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _cmd(synth: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "launch/train.py",
        "--ds",
        "ds_configs/cpu.json",
        f"data.root={synth}",
        "data.batch_size=4",
        "data.num_workers=1",
        "optim.batch_size=4",
        "optim.epochs=2",
        "optim.warmup_epochs=0.5",
        "optim.clip_grad=1.0",
        "model.dropout=0.5",
        "train.ckpt_every_steps=2",
        "train.keep_checkpoints=3",
        "train.eval_every_epochs=0",
        "train.progress=false",
        "train.threads_per_rank=1",
        "tracking.enabled=false",
        f"train.out_dir={out}",
        *extra,
    ]


def _losses(out: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["lr"]) for r in rows]


def test_sigkill_mid_epoch_then_resume_is_bitwise(synth: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref = tmp_path / "ref"
    subprocess.run(_cmd(synth, ref), check=True, cwd=REPO, env=env, capture_output=True)
    reference = _losses(ref)
    steps_per_epoch = 10  # 40 train videos / batch 4
    assert len(reference) == 2 * steps_per_epoch

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(synth, killed),
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and not (latest.exists() and latest.read_text() >= "step_00000004"):
        assert proc.poll() is None, "run ended before it could be killed"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = int(latest.read_text().split("_")[1])
    assert killed_at < steps_per_epoch  # mid-epoch
    logged_before_resume = len(_losses(killed))
    assert logged_before_resume < len(reference)

    # The checkpoint holds only the trainable state (no frozen tower) plus optimizer/scheduler/position.
    ck = killed / "checkpoints" / f"step_{killed_at:08d}"
    state = torch.load(ck / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    assert state["module"] and not any(k.startswith("backbone") for k in state["module"])
    assert {k.split(".")[0] for k in state["module"]} == {"side", "head"}
    assert state["optimizer"]["state"] and state["lr_scheduler"]["last_epoch"] == killed_at
    assert state["s4v_position"] == {"epoch": 0, "videos": 4 * killed_at, "step": killed_at}
    assert (ck / "rng_rank00000.pt").is_file() and (ck / "config.yaml").is_file()
    assert not list((killed / "checkpoints").glob(".tmp-*"))

    subprocess.run(_cmd(synth, killed, "--resume"), check=True, cwd=REPO, env=env, capture_output=True)
    resumed = _losses(killed)
    assert resumed == reference  # exact float equality: losses and learning rates, every step
    final_ref = torch.load(ref / "final" / "trainable.pt")
    final_res = torch.load(killed / "final" / "trainable.pt")
    assert all(torch.equal(final_ref[k], final_res[k]) for k in final_ref)
