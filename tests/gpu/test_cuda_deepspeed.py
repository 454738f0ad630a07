"""One DeepSpeed training step on CUDA through the real trainer (`launch/train.py`), tiny tower, synthetic videos:
ds_configs/vitb.json (fp16 with dynamic loss scaling, ZeRO-0) and ds_configs/vite.json (bf16, ZeRO-1)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.usefixtures("compiled_triton")
@pytest.mark.parametrize(
    "ds,dtype", [("vitb", torch.float16), ("vite", torch.bfloat16)], ids=["vitb-fp16", "vite-bf16"]
)
def test_one_step(synth: Path, tmp_path: Path, ds: str, dtype: torch.dtype) -> None:
    out = tmp_path / ds
    cmd = [
        sys.executable,
        "launch/train.py",
        "--ds",
        f"ds_configs/{ds}.json",
        f"data.root={synth}",
        "data.batch_size=4",
        "data.num_workers=0",
        "optim.batch_size=4",
        "optim.epochs=1",
        "train.max_steps=1",
        "train.eval_every_epochs=0",
        "train.progress=false",
        "tracking.enabled=false",
        f"train.out_dir={out}",
    ]
    # The side network's temporal conv runs the compiled Triton kernels (temporal_impl auto on CUDA).
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and math.isfinite(records[0]["loss"]) and records[0]["peak_mem_mb"] > 0
    meta = json.loads((out / "final" / "meta.json").read_text())
    assert meta["world_size"] == 1 and meta["ds_config"][{"vitb": "fp16", "vite": "bf16"}[ds]]["enabled"]
    state = torch.load(out / "checkpoints" / "step_00000001" / "mp_rank_00_model_states.pt", weights_only=False)
    module = state["module"]
    assert module["head.fc.weight"].dtype == dtype
    assert module["head.bn.running_mean"].dtype == torch.float32  # BatchNorm statistics stay fp32
    assert all(torch.isfinite(t.float()).all() for t in module.values() if t.is_floating_point())
