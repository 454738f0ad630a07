"""Elastic, preemption-safe training: the data position counts videos of one global order, so resumes on
other world sizes read every video of the epoch once; optimizer state comes back bitwise at any world size
and ZeRO stage; SIGTERM to a running job ends in a checkpoint of the step it stopped at; DeepSpeed's
shared-memory buffers do not outlive a run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from s4v.core.preemption import EXIT_STOPPED
from s4v.data import build_loader
from s4v.data.config import DataConfig

REPO = Path(__file__).resolve().parents[1]
DEEPSPEED = str(Path(sys.executable).with_name("deepspeed"))
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(ranks: int, port: int | None = None) -> list[str]:
    if ranks == 1:  # a plain process is a world of one (and starts faster than the launcher)
        return [sys.executable]
    return [DEEPSPEED, "--num_gpus", str(ranks), "--master_port", str(port or _port())]


def _overrides(synth: Path, out: Path, micro: int, global_batch: int, *extra: str) -> list[str]:
    return [
        f"data.root={synth}",
        f"data.batch_size={micro}",
        "data.num_workers=0",
        f"optim.batch_size={global_batch}",
        "optim.epochs=2",
        "optim.warmup_epochs=0.5",
        "train.eval_every_epochs=0",
        "train.progress=false",
        "train.threads_per_rank=1",
        "tracking.enabled=false",
        f"train.out_dir={out}",
        *extra,
    ]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _list_set(root: Path, n: int) -> DataConfig:
    (root / "train.txt").write_text("".join(f"v{i}.webm {i % 3}\n" for i in range(n)))
    (root / "val.txt").write_text("v0.webm 0\n")
    return DataConfig(root=str(root))


def _consume(cfg: DataConfig, world: int, micro: int, start: int, steps: int, accumulation: int) -> list[int]:
    """Video indices `steps` optimizer steps read on `world` ranks from global position `start`."""
    cfg.batch_size = micro
    read = []
    for rank in range(world):
        ld = build_loader(cfg, "train", rank, world, seed=7)
        ld.set_epoch(3)
        read += np.concatenate(ld.batches(start)[: steps * accumulation] or [[]]).astype(int).tolist()
    return read


@pytest.mark.parametrize("n", [96, 103])  # the global batch 12 divides 96, not 103
def test_resumes_on_other_world_sizes_read_the_epoch_order_exactly_once(tmp_path: Path, n: int) -> None:
    cfg, global_batch = _list_set(tmp_path, n), 12
    steps_per_epoch = n // global_batch
    order = build_loader(cfg, "train", 0, 1, seed=7)
    order.set_epoch(3)
    order = order.order()
    used = order[: steps_per_epoch * global_batch].tolist()  # the tail (n mod 12 videos) is dropped
    # (world, micro) legs, each taking some steps, then a resume on the next: 2 -> 1 -> 3 -> 2 -> 2, the
    # last legs in the epoch's final steps.
    legs = [(2, 3, 3), (1, 4, 2), (3, 2, 1), (2, 2, steps_per_epoch - 7), (2, 6, 1)]
    read, position = [], 0
    for world, micro, steps in legs:
        accumulation = global_batch // (world * micro)
        leg = _consume(cfg, world, micro, position, steps, accumulation)
        assert len(leg) == steps * global_batch
        assert sorted(leg) == sorted(order[position : position + steps * global_batch].tolist())
        read += leg
        position += steps * global_batch
    assert position == steps_per_epoch * global_batch
    assert Counter(read) == Counter(used)  # the epoch's order, each video once, none skipped
    # Past the last step less than a global batch is left: the trainer ends the epoch there.
    assert len(_consume(cfg, 2, 3, position, 1, 2)) < global_batch


def test_the_position_of_an_old_per_rank_checkpoint_reads_the_same_batches(tmp_path: Path) -> None:
    """Before the global count, rank r read `order[r::world][:n // world]` in batches: the same videos as
    micro-batch b of the global order, so a checkpoint's `batch` b maps onto video b * micro * world."""
    cfg = _list_set(tmp_path, 50)
    cfg.batch_size = 3
    for rank in range(2):
        ld = build_loader(cfg, "train", rank, 2, seed=7)
        ld.set_epoch(1)
        shard = ld.order()[rank::2][: 50 // 2]
        old = [shard[i : i + 3] for i in range(0, len(shard) - 2, 3)]
        assert len(old) == len(ld)
        for b in range(len(old)):
            np.testing.assert_array_equal(ld.batches(b * 3 * 2)[0], old[b])


def _train(synth: Path, out: Path, ranks: int, ds: str, *extra: str) -> None:
    """3 steps of global batch 12 (40 videos: 3 steps per epoch), a checkpoint at step 2."""
    args = _overrides(synth, out, 2, 12, "train.max_steps=3", "train.ckpt_every_steps=2", *extra)
    _run([*_launch(ranks), "launch/train.py", "--ds", ds, *args])


def _probe(synth: Path, checkpoint: Path, out: Path, ranks: int, ds: str, *extra: str) -> dict:
    """The state `--resume` loads from `checkpoint` on `ranks` ranks."""
    args = _overrides(synth, out.with_suffix(""), 2, 12, *extra)
    _run([*_launch(ranks), "tests/elastic_probe.py", str(checkpoint), str(out), "--ds", ds, *args])
    return torch.load(out, weights_only=False)


def _assert_same_state(saved: dict, loaded: dict) -> None:
    """Bitwise: fp32 masters, both Adam moments, step counts, lrs, scheduler, DeepSpeed's counters."""
    assert saved["master"].keys() == loaded["master"].keys() and saved["master"]
    for name, value in saved["master"].items():
        assert torch.equal(value, loaded["master"][name]), name
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(saved["moments"][key][name], loaded["moments"][key][name]), (key, name)
    assert all(torch.equal(a, b) for a, b in zip(saved["steps"], loaded["steps"], strict=True))
    assert saved["steps"][0].item() == 2
    assert saved["lrs"] == loaded["lrs"] and saved["scheduler"] == loaded["scheduler"]
    assert saved["counters"] == loaded["counters"]


ZERO = "ds_configs/vite.json"  # bf16, ZeRO-1; ZeRO-2 by override


@pytest.fixture(scope="module")
def saved(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[int, int], Path]:
    """Runs of 3 steps on 2 ranks at ZeRO-1 and ZeRO-2 and on 1 rank at ZeRO-2, each with a checkpoint at step 2
    (ZeRO-1 and ZeRO-2 partition the optimizer state by the same code, so one stage is grown to 3 ranks)."""
    root = tmp_path_factory.mktemp("elastic")
    runs = {}
    for ranks, stage in ((2, 1), (2, 2), (1, 2)):
        runs[ranks, stage] = root / f"w{ranks}-zero{stage}"
        _train(synth, runs[ranks, stage], ranks, ZERO, f"ds.zero_optimization.stage={stage}")
    return runs


@pytest.mark.parametrize(
    "saved_ranks, stage, ranks, load_stage",
    [(2, 1, 1, 1), (2, 2, 1, 2), (1, 2, 3, 2), (2, 1, 1, 2), (2, 2, 2, 2)],
    ids=["2to1-zero1", "2to1-zero2", "1to3-zero2", "2to1-zero1to2", "2to2-zero2-deepspeed-files"],
)
def test_optimizer_state_resumes_bitwise_at_any_world_size_and_zero_stage(
    saved: dict, synth: Path, tmp_path: Path, saved_ranks: int, stage: int, ranks: int, load_stage: int
) -> None:
    """The consolidated fp32 masters and moments after loading equal those saved, bit for bit, and the
    lr of the next step is the uninterrupted run's. The last case loads DeepSpeed's own files (same world
    size and stage): elastic.pt holds exactly the state DeepSpeed restores."""
    run = saved[saved_ranks, stage]
    checkpoint = run / "checkpoints" / "step_00000002"
    written = torch.load(checkpoint / "elastic.pt", weights_only=False)
    loaded = _probe(synth, checkpoint, tmp_path / "probe.pt", ranks, ZERO, f"ds.zero_optimization.stage={load_stage}")
    _assert_same_state(written, loaded["state"])
    assert all(torch.equal(v, loaded["module"][k]) for k, v in written["module"].items())  # bf16 weights, BN stats
    assert loaded["position"] == {"epoch": 0, "videos": 24, "step": 2}
    assert loaded["lr"][-1] == _metrics(run)[2]["lr"]  # the lr step 3 of the uninterrupted run used


def test_a_checkpoint_without_elastic_state_on_another_world_size_is_one_error_line(
    saved: dict, synth: Path, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "checkpoints" / "step_00000002"
    shutil.copytree(saved[2, 1] / "checkpoints" / "step_00000002", checkpoint)
    (checkpoint / "elastic.pt").unlink()  # as checkpoints were written before elastic.pt
    args = _overrides(synth, tmp_path / "out", 2, 12)
    cmd = [sys.executable, "launch/train.py", "--ds", ZERO, *args, "--resume", str(checkpoint)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=ENV)
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "world size" in errors[0] and "Traceback" not in r.stderr


def test_zero3_resumes_only_on_its_own_layout_and_says_so_in_one_line(synth: Path, tmp_path: Path) -> None:
    """ZeRO-3 keeps AdamW's state where the per-parameter accessors do not reach it: no elastic.pt is
    written, the same layout resumes through DeepSpeed's files, another one is refused in one line."""
    run = tmp_path / "zero3"
    _train(synth, run, 1, ZERO, "ds.zero_optimization.stage=3")
    checkpoint = run / "checkpoints" / "step_00000002"
    assert not (checkpoint / "elastic.pt").exists()
    args = _overrides(synth, tmp_path / "out", 2, 12, "train.max_steps=3")
    cmd = [sys.executable, "launch/train.py", "--ds", ZERO, "--resume", str(checkpoint), *args]
    r = subprocess.run([*cmd, "ds.zero_optimization.stage=2"], cwd=REPO, capture_output=True, text=True, env=ENV)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "ZeRO-3" in errors[0], r.stderr[-2000:]
    _run([*cmd, "ds.zero_optimization.stage=3"])
    assert [m["lr"] for m in _metrics(tmp_path / "out")] == [_metrics(run)[2]["lr"]]


def _rank_pids(launcher: int) -> list[int]:
    """The rank processes under a `deepspeed` runner (runner -> launcher -> ranks), by local rank."""
    import psutil

    ranks = {}
    for p in psutil.Process(launcher).children(recursive=True):
        flag = next((a for a in p.cmdline() if a.startswith("--local_rank=")), None)
        if flag and flag not in p.parent().cmdline():  # not a data-loader worker forked by the rank
            ranks[int(flag.split("=")[1])] = p.pid
    return [ranks[k] for k in sorted(ranks)]


@pytest.mark.parametrize("target", ["process-group-SIGTERM", "one-rank-SIGUSR1"])
def test_a_stop_signal_checkpoints_the_step_and_a_resume_reads_the_rest_of_the_epoch(
    synth: Path, tmp_path: Path, target: str
) -> None:
    """2 ranks, global batch 2 (20 steps per epoch), one loader worker per rank (it gets the signal too
    when the whole group does). All ranks stop after the same step, inside the launcher's 30 s grace, with
    a checkpoint of that step and no buffer left in /dev/shm; a 1-rank resume (micro-batch 2) goes on with
    the next step and ends the epoch at step 20."""
    out, port = tmp_path / "run", _port()
    args = _overrides(synth, out, 1, 2, "data.num_workers=1", "optim.epochs=1")
    if target == "one-rank-SIGUSR1":  # wall-clock checkpoints too: 6 ms, so one after every step
        args += ["train.ckpt_every_minutes=0.0001", "train.keep_checkpoints=100"]
    cmd = [*_launch(2, port), "launch/train.py", "--ds", "ds_configs/cpu.json", *args]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=ENV, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before the signal"
        time.sleep(0.05)
    sent = time.monotonic()
    if target == "process-group-SIGTERM":
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        os.kill(_rank_pids(proc.pid)[1], signal.SIGUSR1)
    log = proc.communicate(timeout=90)[0]
    assert time.monotonic() - sent < 30, log[-3000:]
    name = "SIGTERM" if target == "process-group-SIGTERM" else "SIGUSR1"
    # The `deepspeed` runner has no handler and dies of a group's SIGTERM (its launcher child waits for the
    # ranks); a rank signalled alone exits EXIT_STOPPED, which the launcher and runner pass on.
    assert proc.returncode == (-signal.SIGTERM if name == "SIGTERM" else EXIT_STOPPED), log[-3000:]
    rows = _metrics(out)
    stopped = rows[-1]["step"]
    assert [r["step"] for r in rows] == list(range(1, stopped + 1)) and 3 <= stopped < 20, log[-3000:]
    assert f"[s4v] {name}: stopping after this optimizer step" in log  # from the rank signalled
    by = name if name == "SIGTERM" else "a signal to another rank"  # rank 0 reports
    assert f"stopped by {by} at step {stopped}" in log and f"exit {EXIT_STOPPED}" in log
    assert (out / "checkpoints" / "latest").read_text() == f"step_{stopped:08d}"
    meta = json.loads((out / "checkpoints" / f"step_{stopped:08d}" / "meta.json").read_text())
    assert (meta["epoch"], meta["videos"], meta["step"]) == (0, 2 * stopped, stopped)
    assert not (out / "final").exists() and "Traceback" not in log
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"))
    if name == "SIGUSR1":  # every rank took each clock decision alike, or a save would have hung
        saved = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
        assert saved == [f"step_{k:08d}" for k in range(1, stopped + 1)]
        return
    resumed = [a.replace("data.batch_size=1", "data.batch_size=2") for a in args]
    r = _run([sys.executable, "launch/train.py", "--ds", "ds_configs/cpu.json", *resumed, "--resume"])
    assert "written by 2 rank(s)" in r.stdout
    rows = _metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 21)) and all(r["epoch"] == 0 for r in rows)
    assert (out / "final" / "trainable.pt").is_file()
