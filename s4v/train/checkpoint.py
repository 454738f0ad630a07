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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s4v.config import Config, dump_config
from s4v.train.distributed import barrier

LATEST = "latest"


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
    engine: Any, root: Path, step: int, position: dict[str, int], cfg: Config, meta: dict[str, Any], keep: int
) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory."""
    rank = engine.global_rank
    tag = f"step_{step:08d}"
    tmp_tag = f".tmp-{tag}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root / tmp_tag, ignore_errors=True)  # left over by a run killed while saving
    barrier()
    engine.save_checkpoint(str(root), tag=tmp_tag, client_state={"s4v_position": position}, save_latest=False)
    tmp = root / tmp_tag
    torch.save(rng_state(), tmp / f"rng_rank{rank:05d}.pt")
    if rank == 0:
        write_meta(tmp, cfg, {**meta, "step": step, **position})
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


def load_checkpoint(engine: Any, path: Path) -> dict[str, int]:
    """Restore trainable state, optimizer, scheduler and this rank's RNG; returns the data position."""
    load_path, client = engine.load_checkpoint(str(path.parent), tag=path.name)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint {path}")
    rng_file = path / f"rng_rank{engine.global_rank:05d}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:  # a different world size: the run continues, but not bitwise like the original
        print(f"[s4v] warning: {rng_file.name} missing in {path} (world size changed?); RNG not restored")
    return dict(client["s4v_position"])


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
    raise FileNotFoundError(f"{directory}: neither trainable.pt nor a DeepSpeed checkpoint")
