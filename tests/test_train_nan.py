"""Never train on NaN: a step with a non-finite loss or gradient is skipped, too many in a row stop the run
with a one-line error naming the last good checkpoint, and no checkpoint ever holds a non-finite tensor."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from s4v.train.optimizer import SkippingAdamW

REPO = Path(__file__).resolve().parents[1]


def test_skipping_adamw_leaves_weights_and_state_alone_on_a_non_finite_gradient() -> None:
    w = torch.nn.Parameter(torch.ones(3))
    opt = SkippingAdamW([w], lr=0.1, weight_decay=0.1)
    w.grad = torch.tensor([1.0, float("nan"), 0.0])
    opt.step()
    assert opt.overflow and torch.equal(w.detach(), torch.ones(3)) and not opt.state
    w.grad = torch.tensor([1.0, 1.0, 1.0])
    opt.step()
    assert not opt.overflow and (w.detach() < 1).all() and opt.state[w]["step"] == 1


def test_a_diverging_run_stops_with_one_line_and_finite_checkpoints(synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "launch/train.py",
        "--ds",
        "ds_configs/cpu.json",
        "--config",
        "configs/synth_tiny.yaml",
        f"data.root={synth}",
        "data.batch_size=4",
        "data.num_workers=1",
        "optim.batch_size=4",
        "optim.epochs=2",
        "optim.warmup_epochs=0",
        "optim.lr=1e12",  # the demo recipe's lr x 1e15: the weights explode after the first step
        "train.ckpt_every_steps=1",
        "train.keep_checkpoints=100",
        "train.max_bad_steps=3",
        "train.eval_every_epochs=0",
        "train.progress=false",
        "train.threads_per_rank=1",
        "tracking.enabled=false",
        f"train.out_dir={out}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: 3 consecutive steps with a non-finite loss or gradient"), error
    latest = (out / "checkpoints" / "latest").read_text().strip()
    assert error.endswith(f"last good checkpoint: {out / 'checkpoints' / latest}"), error
    skipped = [line for line in proc.stdout.splitlines() if " skipped: non-finite " in line]
    assert len(skipped) == 3 and all(".webm" in line for line in skipped), proc.stdout[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows][-3:] == [len(rows) - 2, len(rows) - 1, len(rows)]
    assert not (out / "final").exists()
    checkpoints = sorted((out / "checkpoints").glob("step_*"))
    assert checkpoints
    for directory in checkpoints:
        for file in directory.rglob("*.pt"):
            state = torch.load(file, map_location="cpu", weights_only=False)
            tensors = [t for t in _tensors(state) if t.is_floating_point()]
            assert all(torch.isfinite(t).all() for t in tensors), file


def _tensors(obj: object) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in _tensors(v)]
    return []
