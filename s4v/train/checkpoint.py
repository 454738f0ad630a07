"""Resumable checkpoints: trainable state, optimizer, scheduler, per-rank RNG and data position.

Layout under `<out_dir>/checkpoints/`:
  step_00000120/    DeepSpeed files (trainable module only, optimizer or ZeRO shards, LR scheduler,
                    client state = data position), rng_rank00000.pt per rank, config.yaml, meta.json
  latest            name of the newest complete checkpoint
A checkpoint is written under a `.tmp-` name and renamed once every rank has finished, and `latest` is
replaced atomically, so a run killed at any moment leaves either the previous or the new checkpoint.
The directory is assumed to be on a file system all nodes share.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml

from s4v.config import Config, dump_config, to_dict
from s4v.errors import UserError
from s4v.train.build import check_fingerprint
from s4v.train.distributed import barrier

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

LATEST = "latest"
POSITION_KEY = "s4v_position"  # the data position in DeepSpeed's client state
_SHAPING = ("task", "preset", "kind", "matching")  # model fields that decide which trainable tensors exist


@dataclass
class DataPosition:
    """Where a run is in its data: epoch, micro-batches of that epoch consumed, optimizer steps taken.

    The trainer advances it and checkpoints store `state_dict()`; a resumed run continues with batch
    `batch` of epoch `epoch`, and the loader's per-(seed, epoch) order makes those the same batches.
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch, "step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch, self.step = int(state["epoch"]), int(state["batch"]), int(state["step"])

    def next_epoch(self) -> None:
        self.epoch, self.batch = self.epoch + 1, 0


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def trainable_state(view: torch.nn.Module) -> dict[str, torch.Tensor]:
    """fp32 copy of the trainable modules' state (parameters and BatchNorm statistics)."""
    return {k: (v.float() if v.is_floating_point() else v).detach().cpu() for k, v in view.state_dict().items()}


def write_meta(directory: Path, cfg: Config, meta: dict[str, Any]) -> None:
    dump_config(cfg, directory / "config.yaml")
    _atomic_write(directory / "meta.json", json.dumps(meta, indent=2).encode())


def save_checkpoint(
    engine: DeepSpeedEngine, root: Path, position: DataPosition, cfg: Config, meta: dict[str, Any], keep: int
) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory."""
    rank = engine.global_rank
    tag = f"step_{position.step:08d}"
    tmp_tag = f".tmp-{tag}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root / tmp_tag, ignore_errors=True)  # left over by a run killed while saving
    barrier()
    state = position.state_dict()
    engine.save_checkpoint(str(root), tag=tmp_tag, client_state={POSITION_KEY: state}, save_latest=False)
    tmp = root / tmp_tag
    torch.save(rng_state(), tmp / f"rng_rank{rank:05d}.pt")
    if rank == 0:
        write_meta(tmp, cfg, {**meta, **state})
    barrier()
    final = root / tag
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _atomic_write(root / LATEST, tag.encode())
        _prune(root, keep)
    barrier()
    return final


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[: max(0, len(steps) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if path.is_dir() else None


def read_meta(directory: Path) -> dict[str, Any]:
    """meta.json of a checkpoint or an export; a directory without one is not a checkpoint."""
    path = directory / "meta.json"
    if not path.is_file():
        raise UserError(f"{directory} is not a checkpoint directory (no meta.json)")
    return json.loads(path.read_text())


def check_resumable(directory: Path, cfg: Config, meta: dict[str, Any]) -> dict[str, Any]:
    """The meta of checkpoint `directory` once it is known to fit this run: same trainable modules
    (task, preset, kind, matching), same classes and the same frozen tower. Returns that meta."""
    previous = read_meta(directory)
    saved = yaml.safe_load((directory / "config.yaml").read_text())["model"]
    ours = to_dict(cfg)["model"]
    differ = [f"model.{k}={saved.get(k)!r} there, {ours[k]!r} here" for k in _SHAPING if saved.get(k) != ours[k]]
    if previous["num_classes"] != meta["num_classes"]:
        differ.append(f"{previous['num_classes']} classes there, {meta['num_classes']} here")
    if differ:
        raise UserError(f"checkpoint {directory} is of another model ({'; '.join(differ)}); resume with its config")
    check_fingerprint(previous["backbone_fingerprint"], meta["backbone_fingerprint"])
    return previous


def load_checkpoint(engine: DeepSpeedEngine, path: Path, position: DataPosition) -> None:
    """Restore trainable state, optimizer, scheduler, this rank's RNG and the data position."""
    # DeepSpeed asserts (no message) on a directory without its model-state files, e.g. an export.
    load_path = None
    if any(path.glob("*model_states.pt")):
        load_path, client = engine.load_checkpoint(str(path.parent), tag=path.name)
    if load_path is None:
        raise UserError(f"{path} holds no DeepSpeed training state: resume from checkpoints/step_*, not final/")
    rng_file = path / f"rng_rank{engine.global_rank:05d}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:  # a different world size: the run continues, but not bitwise like the original
        print(f"[s4v] warning: {rng_file.name} missing in {path} (world size changed?); RNG not restored")
    position.load_state_dict(client[POSITION_KEY])


def export_trainable(view: torch.nn.Module, directory: Path, cfg: Config, meta: dict[str, Any]) -> Path:
    """Rank 0: the deliverable of a run: fp32 trainable state + resolved config + metadata."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / ".trainable.pt.tmp"
    torch.save(trainable_state(view), tmp)
    os.replace(tmp, directory / "trainable.pt")
    write_meta(directory, cfg, meta)
    return directory


def load_trainable(directory: Path) -> dict[str, torch.Tensor]:
    """Trainable state from an exported directory or from a training checkpoint (DeepSpeed files)."""
    exported = directory / "trainable.pt"
    if exported.is_file():
        return torch.load(exported, map_location="cpu", weights_only=True)
    ds_file = directory / "mp_rank_00_model_states.pt"
    if ds_file.is_file():
        state = torch.load(ds_file, map_location="cpu", weights_only=False)["module"]
        return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    raise UserError(f"{directory}: neither trainable.pt nor a DeepSpeed checkpoint")
