"""Resumable checkpoints: trainable state, optimizer, scheduler, per-rank RNG and data position.

Layout under `<out_dir>/checkpoints/`:
  step_00000120/    DeepSpeed files (trainable module only, optimizer or ZeRO shards, LR scheduler,
                    client state = data position), rng_rank00000.pt per rank, elastic.pt (the same
                    trainable and optimizer state in a form no world size shapes), config.yaml,
                    meta.json (data position, world size, DeepSpeed config)
  latest            name of the newest complete checkpoint
A run on the world size, ZeRO stage and precision that wrote a checkpoint resumes through DeepSpeed's
files, bitwise; any other resumes through elastic.pt (s4v/train/elastic.py).
A checkpoint is written under a `.tmp-` name and renamed once every rank has finished, and `latest` is
replaced atomically, so a run killed at any moment leaves either the previous or the new checkpoint.
The directory is assumed to be on a file system all nodes share.
"""

from __future__ import annotations

import dataclasses
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
from s4v.core.choices import SideOptions
from s4v.core.errors import UserError
from s4v.train import elastic
from s4v.train.build import check_fingerprint
from s4v.train.distributed import barrier
from s4v.train.precision import compute_dtype

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

LATEST = "latest"
POSITION_KEY = "s4v_position"  # the data position in DeepSpeed's client state
_SHAPING = ("task", "preset", "kind", "matching", "side")  # model fields that decide which trainable tensors exist


@dataclass
class DataPosition:
    """Where a run is in its data: epoch, videos of that epoch's global order consumed, optimizer steps.

    The position counts videos of the order every world size shares (`VideoLoader.batches`), not
    per-rank batches, so a run resumed on other ranks, another micro-batch or accumulation goes on with
    the first unused video. Checkpoints are taken at optimizer steps, so `videos` is then a multiple of
    the global batch.
    """

    epoch: int = 0
    videos: int = 0
    step: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "videos": self.videos, "step": self.step}

    def load_state_dict(self, state: dict[str, int], videos_per_batch: int) -> None:
        """`videos_per_batch`: what one micro-batch consumed (micro batch x world size) in the run that
        wrote `state`; positions from before the global count give micro-batches per rank ("batch")."""
        videos = state["videos"] if "videos" in state else int(state["batch"]) * videos_per_batch
        self.epoch, self.videos, self.step = int(state["epoch"]), int(videos), int(state["step"])

    def next_epoch(self) -> None:
        self.epoch, self.videos = self.epoch + 1, 0


def atomic_write(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all (a temp file in the same directory, fsynced, then renamed)."""
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
    atomic_write(directory / "meta.json", json.dumps(meta, indent=2).encode())


def save_checkpoint(
    engine: DeepSpeedEngine,
    view: torch.nn.Module,
    root: Path,
    position: DataPosition,
    cfg: Config,
    meta: dict[str, Any],
    keep: int,
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
    if elastic.supported(engine, view):
        elastic.save(engine, view, tmp)
    if rank == 0:
        write_meta(tmp, cfg, {**meta, **state})
    barrier()
    final = root / tag
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        atomic_write(root / LATEST, tag.encode())
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
    (task, preset, kind, matching), same global batch, same classes and the same frozen tower."""
    previous = read_meta(directory)
    saved_cfg = yaml.safe_load((directory / "config.yaml").read_text())
    saved, ours = saved_cfg["model"], to_dict(cfg)["model"]
    saved.setdefault("side", dataclasses.asdict(SideOptions()))  # written before model.side: the paper's
    differ = [f"model.{k}={saved.get(k)!r} there, {ours[k]!r} here" for k in _SHAPING if saved.get(k) != ours[k]]
    saved_batch = saved_cfg["optim"]["batch_size"]
    if saved_batch != cfg.optim.batch_size:  # the data position and the LR schedule count its steps
        differ.append(f"optim.batch_size={saved_batch} there, {cfg.optim.batch_size} here")
    # Keys a checkpoint written before them lacks: the sweep section, then its halving.
    saved_sweep = {"grid": {}, "members": [], "halving": None, **saved_cfg.get("sweep", {})}
    if saved_sweep != to_dict(cfg)["sweep"]:  # the members' names, modules and optimizer groups
        differ.append(f"sweep={saved_sweep} there, {to_dict(cfg)['sweep']} here")
    carve = [(m.get("heldout") or {}).get(k) for m in (previous, meta) for k in ("videos", "sha256")]
    if carve[:2] != carve[2:]:  # positions count the carved order: another carve resumes at other videos
        differ.append(f"held-out carve {carve[:2]} there, {carve[2:]} here (data.heldout_fraction / heldout_list)")
    if previous["num_classes"] != meta["num_classes"]:
        differ.append(f"{previous['num_classes']} classes there, {meta['num_classes']} here")
    if differ:
        raise UserError(f"checkpoint {directory} does not fit this run ({'; '.join(differ)}); resume with its config")
    check_fingerprint(previous["backbone_fingerprint"], meta["backbone_fingerprint"])
    return previous


def _layout(meta: dict[str, Any]) -> tuple[int, int, str]:
    """What shapes DeepSpeed's files: data-parallel world size, ZeRO stage, precision."""
    ds = meta["ds_config"]
    precision = str(compute_dtype(ds)).removeprefix("torch.")
    return meta["world_size"], int(ds.get("zero_optimization", {}).get("stage", 0)), precision


def load_checkpoint(
    engine: DeepSpeedEngine, view: torch.nn.Module, path: Path, position: DataPosition, meta: dict[str, Any]
) -> bool:
    """Restore trainable state, optimizer, scheduler, the data position and, at the same world size,
    this rank's RNG. `meta` is this run's; returns whether DeepSpeed's own files were loaded (the writer's
    world size, ZeRO stage and precision, or ZeRO-0 on both sides) rather than the world-size-free elastic.pt."""
    previous = read_meta(path)
    if not any(path.glob("*model_states.pt")):  # DeepSpeed asserts (no message) on e.g. an export
        raise UserError(f"{path} holds no DeepSpeed training state: resume from checkpoints/step_*, not final/")
    written, ours = _layout(previous), _layout(meta)
    # Without ZeRO, DeepSpeed's files are not partitioned: they load on any world size in the same precision.
    native = written == ours or written[1:] == ours[1:] == (0, written[2])
    if not native and not ((path / elastic.ELASTIC_FILE).is_file() and elastic.supported(engine, view)):
        raise UserError(
            f"{path} was written on {written[0]} rank(s) at ZeRO-{written[1]} in {written[2]} and holds no "
            f"{elastic.ELASTIC_FILE} (ZeRO-3, or written before it) that {ours[0]} rank(s) at ZeRO-{ours[1]} "
            f"in {ours[2]} could load: resume it on the world size and ds config that wrote it"
        )
    if native:
        try:
            load_path, _ = engine.load_checkpoint(str(path.parent), tag=path.name)
        except Exception as e:  # DeepSpeed's own refusal (e.g. a partition count) is many lines
            lines = str(e).strip().splitlines() or [type(e).__name__]
            raise UserError(f"cannot resume {path} with DeepSpeed's files: {lines[-1]}") from e
        if load_path is None:
            raise UserError(f"{path}: DeepSpeed found no checkpoint to load")
    else:
        elastic.load(engine, view, path)
    rng_file = path / f"rng_rank{engine.global_rank:05d}.pt"
    if previous["world_size"] == meta["world_size"] and rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    elif engine.global_rank == 0:  # per-rank streams (dropout) cannot map onto other ranks
        print(f"[s4v] {path.name} was written by {previous['world_size']} rank(s): RNG streams start afresh")
    videos_per_batch = previous["ds_config"]["train_micro_batch_size_per_gpu"] * previous["world_size"]
    position.load_state_dict(previous, videos_per_batch)
    return native


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
