"""The Slurm template starts one DeepSpeed launcher per node with the node's rank, the first node as
rendezvous, and the user's arguments passed through intact (Slurm's own commands are stood in for: this
machine has no Slurm; the launcher is recorded instead of started)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _tool(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_template_launches_deepspeed_per_node(tmp_path: Path) -> None:
    """A 20,000-node list (200 kB, over the 64 kB a pipe holds) makes `scontrol show hostnames | head -n 1`
    die of SIGPIPE under pipefail every time; the template must read the whole list and take its first name."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _tool(bin_dir, "scontrol", 'printf "gpu-a\\ngpu-b\\n"\nfor ((i = 0; i < 20000; i++)); do echo "gpu-$i"; done\n')
    _tool(bin_dir, "srun", 'while [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    _tool(bin_dir, "deepspeed", f'printf "%s\\n" "$@" > {tmp_path / "argv"}\n')
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "gpu-[a-b]",
        "SLURM_NNODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_GPUS_ON_NODE": "4",
    }
    args = ["--config", "configs/ssv2_vite.yaml", "data.root=/shared/ssv2", "train.out_dir=/shared/runs/a b"]
    subprocess.run(["bash", "launch/slurm.sbatch", *args], cwd=REPO, env=env, check=True, timeout=60)
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv == [
        "--no_ssh", "--num_nodes", "2", "--node_rank", "1", "--num_gpus", "4",
        "--master_addr", "gpu-a", "--master_port", "29500",
        "launch/train.py", "--ds", "ds_configs/vite.json", *args, "--resume", "auto",
    ]  # fmt: skip


def test_slurm_template_requeues_on_the_time_limit_signal_and_waits_for_the_ranks(tmp_path: Path) -> None:
    """SIGUSR1 (`--signal=B:USR1@180`) reaches the batch script while the job step runs: it asks Slurm to
    requeue the job (which sends the ranks SIGTERM), keeps waiting for the step, and exits with its code."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    requeued = tmp_path / "requeued"
    _tool(bin_dir, "scontrol", f'if [[ "$1" == requeue ]]; then echo "$@" > {requeued}; else printf "gpu-a\\n"; fi\n')
    _tool(bin_dir, "srun", 'while [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    started, release = tmp_path / "started", tmp_path / "release"
    _tool(bin_dir, "deepspeed", f"touch {started}\nwhile [ ! -e {release} ]; do sleep 0.05; done\nexit 75\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-a"}
    env |= {"SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_ID": "4242"}
    proc = subprocess.Popen(["bash", "launch/slurm.sbatch", "train.out_dir=/shared/x"], cwd=REPO, env=env)
    deadline = time.monotonic() + 30
    while not started.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    while not requeued.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert requeued.read_text().split() == ["requeue", "4242"]
    assert proc.poll() is None  # still waiting for the ranks to checkpoint
    release.touch()
    assert proc.wait(timeout=30) == 75
