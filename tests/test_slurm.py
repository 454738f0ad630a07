"""The Slurm template starts one DeepSpeed launcher per node with the node's rank, the first node as
rendezvous, and the user's arguments passed through intact (Slurm's own commands are stood in for: this
machine has no Slurm; the launcher is recorded instead of started)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _tool(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_template_launches_deepspeed_per_node(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _tool(bin_dir, "scontrol", 'printf "gpu-a\\ngpu-b\\n"\n')
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
