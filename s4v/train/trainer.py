"""The training job: data, model, DeepSpeed engine, loop with exact resume, evaluation, tracking.

One code path for 1 CPU process and N GPUs on M nodes; what differs (device, backend, precision) comes
from the DeepSpeed accelerator and the DeepSpeed JSON.
"""

from __future__ import annotations

import json
import random
import resource
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s4v.config import Config, flatten, to_dict
from s4v.data import build_loader
from s4v.tracking import Tracker
from s4v.train import checkpoint as ckpt
from s4v.train.build import backbone_fingerprint, build_model
from s4v.train.distributed import all_reduce_mean, barrier, init_distributed
from s4v.train.engine import build_engine, compute_dtype, load_ds_config, plan_batch, resolve_ds_config
from s4v.train.tasks import make_task


def rng_isolated(batches: Iterable[dict]) -> Iterator[dict]:
    """Iterate without touching the global torch RNG: torch's DataLoader draws a base seed from it when
    an iterator starts, which would shift dropout masks after a mid-epoch resume."""
    it = iter(batches)
    while True:
        with torch.random.fork_rng(devices=[]):
            try:
                batch = next(it)
            except StopIteration:
                return
        yield batch


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated accelerator memory, or peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seed_rank(seed: int, rank: int) -> None:
    """Per-rank streams for dropout and friends (the data pipeline seeds itself per video)."""
    torch.manual_seed(seed + 1000003 * rank)
    np.random.seed((seed + 1000003 * rank) % 2**32)
    random.seed(seed + 1000003 * rank)


class StepLog:
    """Rank 0's per-step record: `metrics.jsonl` (exact losses, for resume checks) and MLflow."""

    def __init__(self, path: Path, tracker: Tracker, every: int, active: bool) -> None:
        self.path, self.tracker, self.every, self.active = path, tracker, max(1, every), active

    def truncate(self, step: int) -> None:
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
            self.path.write_text("".join(f"{line}\n" for line in kept))

    def write(self, step: int, record: dict[str, float]) -> None:
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **record}) + "\n")
        if step % self.every == 0:
            self.tracker.log_metrics({f"train/{k}": v for k, v in record.items() if k != "epoch"}, step)


def train(
    cfg: Config, ds_path: str | Path, ds_overrides: dict[str, Any] | None = None, resume: str | None = None
) -> dict[str, Any]:
    """Run the job described by `cfg`; `resume` is "auto" (latest checkpoint of out_dir) or a directory."""
    t_start = time.perf_counter()
    dist = init_distributed(cfg.train.threads_per_rank)
    out = Path(cfg.train.out_dir)
    ckpt_root = out / "checkpoints"
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    barrier()

    if cfg.data.device == "cuda":  # GPU decoding (NVDEC) lands on this rank's GPU
        cfg = replace(cfg, data=replace(cfg.data, device=str(dist.device)))
    train_loader = build_loader(cfg.data, "train", dist.rank, dist.world_size, cfg.train.seed)
    val_loader = build_loader(cfg.data, "val", dist.rank, dist.world_size, cfg.train.seed)
    plan = plan_batch(cfg.optim, cfg.data.batch_size, dist.world_size)
    steps_per_epoch = len(train_loader) // plan.accumulation
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_loader)} micro-batches per epoch < {plan.accumulation} accumulation steps")
    ds = resolve_ds_config(load_ds_config(ds_path, ds_overrides), cfg, plan)
    dtype = compute_dtype(ds)

    task = make_task(cfg)
    model = build_model(cfg, train_loader.num_classes, dist.device)
    fingerprint = backbone_fingerprint(model)
    engine, view = build_engine(model, cfg, ds, dist, steps_per_epoch)
    seed_rank(cfg.train.seed, dist.rank)

    meta: dict[str, Any] = {
        "num_classes": train_loader.num_classes,
        "classes": list(train_loader.classes),
        "backbone_fingerprint": fingerprint,
        "world_size": dist.world_size,
        "ds_config": ds,
    }
    position = {"epoch": 0, "batch": 0, "step": 0}
    resume_path = None
    if resume:
        resume_path = ckpt.latest_checkpoint(ckpt_root) if resume == "auto" else Path(resume)
        if resume_path is None:
            print(f"[s4v] no checkpoint under {ckpt_root}; starting from scratch", flush=True)
        else:
            position = ckpt.load_checkpoint(engine, resume_path)
            meta_prev = json.loads((resume_path / "meta.json").read_text())
            meta["mlflow_run_id"] = meta_prev.get("mlflow_run_id")
    tracker = Tracker(
        cfg.tracking.enabled and dist.is_main,
        cfg.tracking.uri,
        cfg.tracking.experiment,
        cfg.tracking.run_name or out.name,
        cfg.tracking.system_metrics,
        cfg.tracking.system_metrics_interval,
        run_id=meta.get("mlflow_run_id"),
    )
    meta["mlflow_run_id"] = tracker.run_id
    n_trainable = sum(p.numel() for p in model.trainable_parameters())
    n_frozen = sum(p.numel() for p in model.backbone.parameters())
    if resume_path is None:
        tracker.log_params(flatten(to_dict(cfg)))
        tracker.log_params(flatten({"ds": ds}))
        tracker.log_params(
            {
                "world_size": dist.world_size,
                "accumulation_steps": plan.accumulation,
                "steps_per_epoch": steps_per_epoch,
                "trainable_params": n_trainable,
                "frozen_params": n_frozen,
                "device": dist.device.type,
            }
        )
    if dist.is_main:
        print(
            f"[s4v] {cfg.model.kind} on {cfg.model.preset}: {n_trainable:,} trainable / {n_frozen:,} frozen "
            f"params; {dist.world_size} rank(s) on {dist.device.type}, {dtype}; global batch "
            f"{plan.global_batch} = {plan.micro_batch} x {dist.world_size} x {plan.accumulation}; "
            f"{steps_per_epoch} steps/epoch x {cfg.optim.epochs} epochs"
            + (f"; resumed from {resume_path} at {position}" if resume_path else ""),
            flush=True,
        )

    log = StepLog(out / "metrics.jsonl", tracker, cfg.train.log_every_steps, dist.is_main)
    if dist.is_main:
        log.truncate(position["step"])  # drop steps a killed run logged after its last checkpoint
    step = position["step"]
    max_steps = cfg.train.max_steps or cfg.optim.epochs * steps_per_epoch
    micro_per_epoch = steps_per_epoch * plan.accumulation
    last_eval: dict[str, Any] | None = None
    eval_dir = out / "eval"

    def save(pos: dict[str, int]) -> None:
        ckpt.save_checkpoint(engine, ckpt_root, step, pos, cfg, meta, cfg.train.keep_checkpoints)

    for epoch in range(position["epoch"], cfg.optim.epochs):
        if step >= max_steps:
            break
        train_loader.set_epoch(epoch)
        start = position["batch"] if epoch == position["epoch"] else 0
        bar = None
        if dist.is_main and cfg.train.progress:
            from tqdm import tqdm

            bar = tqdm(
                total=steps_per_epoch,
                initial=start // plan.accumulation,
                desc=f"epoch {epoch + 1}",
                unit="step",
                dynamic_ncols=True,
                leave=True,
            )
        loss_sum = torch.zeros((), dtype=torch.float64)
        t_step = time.perf_counter()
        lr = engine.get_lr()[-1]  # the new modules' lr (retrieval: CLIP parts are group 0)
        for micro, batch in enumerate(rng_isolated(train_loader.iter_from(start)), start):
            if micro >= micro_per_epoch or step >= max_steps:
                break
            video = batch["video"].to(dist.device, dtype, non_blocking=True)
            loss = task.loss(engine, video, batch, epoch)
            engine.backward(loss)
            engine.step()
            loss_sum += loss.detach().double().cpu()
            if (micro + 1) % plan.accumulation:
                continue
            step += 1
            mean_loss = all_reduce_mean(loss_sum / plan.accumulation).item()
            now = time.perf_counter()
            record = {
                "epoch": epoch,
                "loss": mean_loss,
                "lr": lr,
                "clips_per_s": plan.global_batch / (now - t_step),
                "peak_mem_mb": peak_memory_mb(dist.device),
            }
            log.write(step, record)
            if bar is not None:
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", clips_s=f"{record['clips_per_s']:.1f}")
                bar.update(1)
            loss_sum.zero_()
            lr = engine.get_lr()[-1]  # the new modules' lr (retrieval: CLIP parts are group 0)
            t_step = time.perf_counter()
            every = cfg.train.ckpt_every_steps
            if every and step % every == 0 and micro + 1 < micro_per_epoch:
                save({"epoch": epoch, "batch": micro + 1, "step": step})
        if bar is not None:
            bar.close()
        done_in_epoch = step - epoch * steps_per_epoch
        if step >= max_steps and done_in_epoch < steps_per_epoch:  # stopped by max_steps mid-epoch
            save({"epoch": epoch, "batch": done_in_epoch * plan.accumulation, "step": step})
            break
        save({"epoch": epoch + 1, "batch": 0, "step": step})
        ev = cfg.train.eval_every_epochs
        if ev and ((epoch + 1) % ev == 0 or epoch + 1 == cfg.optim.epochs):
            last_eval = task.evaluate(engine, model, rng_isolated(val_loader), val_loader, dtype, dist.device)
            if dist.is_main:
                name = f"epoch_{epoch + 1:03d}"
                task.write_report(last_eval, eval_dir, name)
                print(f"[s4v] eval after epoch {epoch + 1}: {task.summary(last_eval)}", flush=True)
                tracker.log_metrics({f"val/{k}": v for k, v in task.tracked(last_eval).items()}, step)

    result: dict[str, Any] = {"steps": step, "wall_s": time.perf_counter() - t_start, "eval": last_eval}
    if dist.is_main:
        final = ckpt.export_trainable(view, out / "final", cfg, {**meta, "step": step})
        if last_eval is not None:
            task.write_report(last_eval, final, "eval")
        tracker.log_metrics({"train/wall_s": result["wall_s"]}, step)
        tracker.log_artifacts(final, "final")
        tracker.finish()
        (out / "result.json").write_text(
            json.dumps(
                {k: v for k, v in result.items() if k != "eval"} | task.headline(last_eval),
                indent=2,
            )
        )
    barrier()
    return result
