"""Data parallelism on CPU/gloo through the real `deepspeed` launcher: 2 ranks follow the 1-rank loss
trajectory at the same global batch; two launcher processes acting as node 0 and node 1 of one job
(loopback master) reproduce the single-launcher 2-rank run; multi-view evaluation of the result."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from s4v.core.errors import UserError
from s4v.tools.infer import load_trained

REPO = Path(__file__).resolve().parents[1]
DEEPSPEED = str(Path(sys.executable).with_name("deepspeed"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(synth: Path, out: Path, micro: int, kind: str = "side4video") -> list[str]:
    return [
        "launch/train.py",
        "--ds",
        "ds_configs/cpu.json",
        f"data.root={synth}",
        f"data.batch_size={micro}",
        "data.num_workers=0",
        "optim.batch_size=8",
        "optim.epochs=1",
        "optim.warmup_epochs=0.4",
        f"model.kind={kind}",
        "train.eval_every_epochs=1",
        "train.progress=false",
        "train.threads_per_rank=1",
        "tracking.enabled=false",
        f"train.out_dir={out}",
    ]


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def _losses(out: Path) -> np.ndarray:
    return np.array([json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()])


@pytest.fixture(scope="module")
def runs(synth: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    paths = {"synth": synth, "root": root}
    for kind in ("side4video", "meanpool"):
        one, two = root / f"{kind}-1", root / f"{kind}-2"
        _run([sys.executable, *_args(synth, one, 8, kind)])
        _run([DEEPSPEED, "--num_gpus", "2", "--master_port", str(_port()), *_args(synth, two, 4, kind)])
        paths[f"{kind}-1"], paths[f"{kind}-2"] = one, two
    return paths


def test_two_ranks_follow_one_rank(runs: dict[str, Path]) -> None:
    meta = json.loads((runs["side4video-2"] / "final" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["ds_config"]["train_micro_batch_size_per_gpu"] == 4
    for kind, rtol in (("meanpool", 1e-5), ("side4video", 0.05)):
        one, two = _losses(runs[f"{kind}-1"]), _losses(runs[f"{kind}-2"])
        print(f"{kind}: max relative loss difference 2 ranks vs 1 rank: {np.max(np.abs(two / one - 1)):.2e}")
        assert len(one) == len(two) == 5  # 40 train videos / global batch 8
        # Each step sees the same 8 samples and DeepSpeed averages the gradients over the ranks. The
        # mean-pool probe has no batch-dependent layer: equal up to float summation order. Side4Video's
        # BatchNorms normalise with per-rank batch statistics (4 instead of 8 videos; SyncBatchNorm has
        # no CPU implementation), so its trajectory agrees closely, not exactly.
        np.testing.assert_allclose(two, one, rtol=rtol)
    assert not np.array_equal(_losses(runs["side4video-2"]), _losses(runs["side4video-1"]))


def test_two_launchers_as_two_nodes(runs: dict[str, Path]) -> None:
    """`deepspeed --no_ssh --node_rank N` once per node, as on a cluster without ssh between nodes."""
    hostfile = runs["root"] / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    out = runs["root"] / "nodes"
    port = str(_port())
    procs = [
        subprocess.Popen(
            [
                DEEPSPEED,
                "--hostfile",
                str(hostfile),
                "--no_ssh",
                "--num_nodes",
                "2",
                "--node_rank",
                str(n),
                "--num_gpus",
                "1",
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                port,
                *_args(runs["synth"], out, micro=4),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for n in (0, 1)
    ]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-2000:] for log in logs)
    assert "nnodes=2" in logs[0] and "node_rank=1" in logs[1]
    meta = json.loads((out / "final" / "meta.json").read_text())
    assert meta["world_size"] == 2
    # Same world size, same shards, same reduction: the 2-node job repeats the 2-rank job exactly.
    np.testing.assert_array_equal(_losses(out), _losses(runs["side4video-2"]))


def test_eval_multiview_report(runs: dict[str, Path]) -> None:
    final = runs["side4video-1"] / "final"
    _run([sys.executable, "launch/eval.py", "--checkpoint", str(final), "--views", "3x2"])
    report = json.loads((final / "eval_3x2" / "eval.json").read_text())
    assert report["views"] == "3x2" and report["num_videos"] == 8
    assert (final / "eval_3x2" / "eval_confusion.png").stat().st_size > 1000
    assert sum(map(sum, report["confusion_matrix"])) == report["num_videos"]
    assert 0 <= report["top1"] <= report["top5"] <= 1
    # 1x1 evaluation through eval.py equals the in-training evaluation at the last epoch.
    _run([sys.executable, "launch/eval.py", "--checkpoint", str(final), "--views", "1x1"])
    in_training = json.loads((final / "eval.json").read_text())
    standalone = json.loads((final / "eval_1x1" / "eval.json").read_text())
    assert standalone["confusion_matrix"] == in_training["confusion_matrix"]
    # Sharded over 2 ranks and gathered: the same predictions as one process.
    out = runs["root"] / "eval-2ranks"
    _run(
        [
            DEEPSPEED,
            "--num_gpus",
            "2",
            "--master_port",
            str(_port()),
            "launch/eval.py",
            "--checkpoint",
            str(final),
            "--views",
            "3x2",
            "--out",
            str(out),
        ]
    )
    sharded = json.loads((out / "eval.json").read_text())
    assert sharded["num_videos"] == report["num_videos"]
    assert sharded["confusion_matrix"] == report["confusion_matrix"]


def test_sharded_frozen_tower_trains_like_the_replicated_one(runs: dict[str, Path]) -> None:
    """`model.shard_frozen=true`: FSDP2 holds half of each frozen block per rank; the DeepSpeed side engine
    sees the same features, so the run repeats the replicated 2-rank run exactly, and its final/ (no tower
    in it) evaluates in one process on a rebuilt, unsharded tower (same fingerprint)."""
    out = runs["root"] / "sharded"
    cmd = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(_port())]
    _run([*cmd, *_args(runs["synth"], out, micro=4), "model.shard_frozen=true"])
    np.testing.assert_array_equal(_losses(out), _losses(runs["side4video-2"]))
    sharded, replicated = (torch.load(r / "final" / "trainable.pt") for r in (out, runs["side4video-2"]))
    assert sharded.keys() == replicated.keys() and not any(k.startswith("backbone.") for k in sharded)
    assert all(torch.equal(sharded[k], v) for k, v in replicated.items())
    _run([sys.executable, "launch/eval.py", "--checkpoint", str(out / "final"), "--views", "1x1"])


def test_vite_json_trains_with_zero_sharded_tower_and_checkpointed_side(runs: dict[str, Path]) -> None:
    """The shipped ViT-E DeepSpeed JSON (bf16, ZeRO-1; ZeRO-2 by override) on 2 ranks with every memory
    option on: DeepSpeed accepts our AdamW under ZeRO, and steps train."""
    for stage in (1, 2):
        out = runs["root"] / f"zero{stage}"
        args = [a.replace("ds_configs/cpu.json", "ds_configs/vite.json") for a in _args(runs["synth"], out, micro=4)]
        extra = [f"ds.zero_optimization.stage={stage}", "model.shard_frozen=true", "model.side_checkpoint=true"]
        _run([DEEPSPEED, "--num_gpus", "2", "--master_port", str(_port()), *args, *extra, "train.max_steps=2"])
        losses = _losses(out)
        assert len(losses) == 2 and np.isfinite(losses).all()
        meta = json.loads((out / "final" / "meta.json").read_text())
        assert meta["ds_config"]["bf16"]["enabled"] and meta["frozen_dtype"] == "bfloat16"
    # Evaluation rebuilds the tower unsharded, in bf16 as trained, so the fingerprints compare.
    _run([sys.executable, "launch/eval.py", "--checkpoint", str(out / "final"), "--views", "1x1"])


def test_runs_without_a_recorded_frozen_dtype_rebuild_the_tower_in_fp32(runs: dict[str, Path], tmp_path) -> None:
    """Runs from before `frozen_dtype` was recorded fingerprinted an fp32 build: they still load. The key is
    read: the same fp32 fingerprint does not match a tower rebuilt in bf16."""
    final = tmp_path / "final"
    shutil.copytree(runs["side4video-1"] / "final", final)
    meta = json.loads((final / "meta.json").read_text())
    assert meta.pop("frozen_dtype") == "float32"
    (final / "meta.json").write_text(json.dumps(meta))
    model, _, _ = load_trained(final, torch.device("cpu"), torch.bfloat16)
    assert model.backbone.dtype == torch.bfloat16  # built in fp32, then cast for evaluation
    (final / "meta.json").write_text(json.dumps(meta | {"frozen_dtype": "bfloat16"}))
    with pytest.raises(UserError, match="frozen tower differs"):
        load_trained(final, torch.device("cpu"), torch.bfloat16)
