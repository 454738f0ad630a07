"""Retrieval end to end through the same launcher: synthetic captions, train, R@K eval, eval.py on the export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_retrieval_trains_and_evaluates_through_launch_train(synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [
        sys.executable, "launch/train.py", "--ds", "ds_configs/cpu.json",
        "--config", "configs/synth_retrieval_tiny.yaml",
        f"data.root={synth}", "data.batch_size=8", "optim.batch_size=8", "optim.epochs=2", "optim.clip_lr=1e-4",
        "train.eval_every_epochs=1", "train.progress=false", "train.threads_per_rank=1", "tracking.enabled=false",
        f"train.out_dir={out}",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "t2v R@1" in done.stdout
    result = json.loads((out / "result.json").read_text())
    assert 0.0 <= result["t2v_R@1"] <= 100.0 and result["steps"] == 2 * (40 // 8)
    report = json.loads((out / "eval" / "epoch_002.json").read_text())
    assert report["num_videos"] == 8 and report["num_captions"] == 8
    assert set(json.loads((out / "final" / "meta.json").read_text())) >= {"backbone_fingerprint"}
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == result["steps"] and all(loss > 0 for loss in losses)

    evaluated = subprocess.run(
        [sys.executable, "launch/eval.py", "--checkpoint", str(out / "final"), "--views", "1x2"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads((out / "final" / "eval_1x2" / "eval.json").read_text())
    assert metrics["views"] == "1x2" and "v2t_MnR" in metrics
