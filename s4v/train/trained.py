"""Loading a trained run: the model of one exported member (`final/`, `checkpoints/step_*`) or of several
members of one sweep on one frozen tower. Shared by `launch/eval.py` and the commands on trained runs
(`s4v predict`, `embed`, `search`), which import it from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from s4v.config import Config, load_config
from s4v.core.errors import UserError
from s4v.train.build import backbone_fingerprint, build_model, check_fingerprint
from s4v.train.checkpoint import load_trainable, read_meta
from s4v.train.precision import prepare_for_dtype

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
COMMANDS_OF_TASK = {"recognition": "s4v predict", "retrieval": "s4v embed / s4v search"}


def default_dtype(device: torch.device) -> str:
    """What evaluation computes in unless told otherwise: fp32 on CPU, fp16 on GPU."""
    return "fp32" if device.type == "cpu" else "fp16"


def load_trained(
    checkpoint_dir: str | Path,
    device: torch.device,
    dtype: torch.dtype,
    overrides: Sequence[str] = (),
    task: str | None = None,
) -> tuple[nn.Module, Config, dict[str, Any]]:
    """(model, run config, meta) of a run's `final/` or a `checkpoints/step_*` directory (see `load_members`)."""
    model, cfgs, metas = load_members([Path(checkpoint_dir)], device, dtype, overrides, task)
    return model, cfgs[0], metas[0]


def load_members(
    directories: Sequence[Path],
    device: torch.device,
    dtype: torch.dtype,
    overrides: Sequence[str] = (),
    task: str | None = None,
) -> tuple[nn.Module, list[Config], list[dict[str, Any]]]:
    """(model, configs, metas) of exported members that share one frozen tower: one directory gives that
    run's model, several (a sweep's members) a `SweepClassifier` scoring them all on one frozen pass.

    The model is in eval mode on `device`, in `dtype` the way training and evaluation run it
    (`prepare_for_dtype`). Its frozen tower is rebuilt from the first config (seed or weights file, after
    `overrides`) and must match the fingerprint the run recorded. `task`, when given, is checked before
    anything is built, so a checkpoint of the other task fails in a fraction of a second.
    """
    for directory in directories:
        if not (directory / "config.yaml").is_file():
            what = "no such directory" if not directory.is_dir() else "not a checkpoint directory (no config.yaml)"
            raise UserError(f"--checkpoint {str(directory)!r}: {what}; pass a run's final/ or a checkpoints/step_* dir")
    metas = [read_meta(d) for d in directories]
    cfgs = [load_config(d / "config.yaml", overrides) for d in directories]
    if task is not None and cfgs[0].model.task != task:
        raise UserError(
            f"--checkpoint {str(directories[0])!r} holds a {cfgs[0].model.task} model, not a {task} one: "
            f"use {COMMANDS_OF_TASK[cfgs[0].model.task]}"
        )
    # The tower is built as the run built it, so that the fingerprints compare, then cast to `dtype`. Runs from
    # before `frozen_dtype` was recorded (and converted reference checkpoints) built and fingerprinted it in fp32.
    meta = metas[0]
    frozen = getattr(torch, meta.get("frozen_dtype", "float32"))
    model = build_model(cfgs[0], meta["num_classes"], device, frozen, cfgs if len(cfgs) > 1 else ())
    check_fingerprint(meta["backbone_fingerprint"], backbone_fingerprint(model))
    view = prepare_for_dtype(model, dtype)
    for module, directory in zip(getattr(model, "members", [view]), directories, strict=True):
        module.load_state_dict(load_trainable(directory))
    return model.eval(), cfgs, metas


def member_run_id(meta: dict[str, Any]) -> str | None:
    """The MLflow run an export's results belong to: its own. Sweep members exported before exports carried
    their own id hold the parent's id and the sweep's member block, which names the member's child run."""
    block, name = meta.get("members"), meta.get("sweep_member")
    if name is not None and block and "names" in block:
        return block["mlflow_run_ids"][block["names"].index(name)]
    return meta.get("mlflow_run_id")
