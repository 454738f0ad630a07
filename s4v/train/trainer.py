"""The training job: data, model, DeepSpeed engine, loop with exact resume, evaluation, tracking.

One code path for 1 CPU process and N GPUs on M nodes; what differs (device, backend, precision) comes
from the DeepSpeed accelerator and the DeepSpeed JSON. `Trainer` sets a job up; `Trainer.train` is the
loop, and the steps it is made of (a micro-batch, a checkpoint, an evaluation, the export) are methods.
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s4v.config import Config, flatten, resolve_members, to_dict
from s4v.data import build_loader
from s4v.errors import UserError
from s4v.perf import mfu, peak_flops
from s4v.preemption import EXIT_STOPPED, CheckpointClock, StopRequest
from s4v.progress import Progress, progress
from s4v.tracking import Tracker
from s4v.train import checkpoint as ckpt
from s4v.train.build import backbone_fingerprint, build_model
from s4v.train.checkpoint import DataPosition
from s4v.train.distributed import all_reduce_sum, barrier, init_distributed
from s4v.train.engine import build_engine, compute_dtype, load_ds_config, plan_batch, resolve_ds_config
from s4v.train.guard import NonFiniteGuard
from s4v.train.members import Members
from s4v.train.metrics import StepLog, StepTimer, flops_per_micro_batch, peak_memory_mb
from s4v.train.tasks import Batch, Metrics, make_task


def seed_rank(seed: int, rank: int) -> None:
    """Per-rank streams for dropout and friends (the data pipeline seeds itself per video)."""
    torch.manual_seed(seed + 1000003 * rank)
    np.random.seed((seed + 1000003 * rank) % 2**32)
    random.seed(seed + 1000003 * rank)


class Trainer:
    """One training job described by a run config and a DeepSpeed JSON; `train()` runs it to the end."""

    def __init__(
        self, cfg: Config, ds_path: str | Path, ds_overrides: dict[str, Any] | None = None, resume: str | None = None
    ) -> None:
        """Build data, model, engine and tracking; `resume` is "auto" (latest checkpoint of out_dir) or a directory."""
        self.t_start = time.perf_counter()
        self.dist = dist = init_distributed(cfg.train.threads_per_rank)
        self.out = Path(cfg.train.out_dir)
        self.ckpt_root = self.out / "checkpoints"
        if dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        barrier()
        if cfg.data.device == "cuda":  # GPU decoding (NVDEC) lands on this rank's GPU
            cfg = replace(cfg, data=replace(cfg.data, device=str(dist.device)))
        self.cfg = cfg
        self.train_loader = build_loader(cfg.data, "train", dist.rank, dist.world_size, cfg.train.seed)
        self.val_loader = build_loader(cfg.data, "val", dist.rank, dist.world_size, cfg.train.seed)
        self.plan = plan_batch(cfg.optim, cfg.data.batch_size, dist.world_size)
        self.steps_per_epoch = len(self.train_loader) // self.plan.accumulation
        if self.steps_per_epoch == 0:
            raise UserError(
                f"{len(self.train_loader)} micro-batches per epoch < {self.plan.accumulation} accumulation steps: "
                "lower optim.batch_size or data.batch_size"
            )
        self.videos_per_epoch = self.steps_per_epoch * self.plan.global_batch  # the tail of the order is dropped
        self.max_steps = cfg.train.max_steps or cfg.optim.epochs * self.steps_per_epoch
        self.ds = resolve_ds_config(load_ds_config(ds_path, ds_overrides), cfg, self.plan)
        self.dtype = compute_dtype(self.ds)

        self.task = make_task(cfg, self.dtype, dist.device, self.train_loader)
        members = resolve_members(cfg)
        self.member_cfgs = [m.cfg for m in members]
        self.model = build_model(cfg, self.train_loader.num_classes, dist.device, self.dtype, self.member_cfgs)
        fingerprint = backbone_fingerprint(self.model)
        self.engine, self.view, self.optimizer = build_engine(
            self.model, cfg, self.ds, dist, self.steps_per_epoch, self.member_cfgs
        )
        self.members = Members(cfg, members, self.model, self.view)
        if self.members.sweep:
            self.members.guard_gradients()
        self.flops_per_step = self.plan.accumulation * self._micro_batch_flops()
        self.peak = peak_flops(dist.device, self.dtype)
        self.timer = StepTimer(dist.device)
        seed_rank(cfg.train.seed, dist.rank)  # after every build: the training RNG streams start here
        self.meta: dict[str, Any] = {
            "num_classes": self.train_loader.num_classes,
            "classes": list(self.train_loader.classes),
            "backbone_fingerprint": fingerprint,
            "frozen_dtype": str(self.dtype).removeprefix("torch."),  # the tower was built and fingerprinted in it
            "world_size": dist.world_size,
            "ds_config": self.ds,
        }
        self.position = DataPosition()
        self.guard = NonFiniteGuard(
            self.members.modules, self.members.names, cfg.train.max_bad_steps,
            lambda: ckpt.latest_checkpoint(self.ckpt_root),
        )  # fmt: skip
        self.guard.failed = self.members.failures  # one record of who failed (restored on resume)
        resumed_from = self._resume(resume)
        self.tracker = Tracker(
            cfg.tracking.enabled and dist.is_main,
            cfg.tracking.uri,
            cfg.tracking.experiment,
            cfg.tracking.run_name or self.out.name,
            cfg.tracking.system_metrics,
            cfg.tracking.system_metrics_interval,
            run_id=self.meta.get("mlflow_run_id"),
        )
        self.meta["mlflow_run_id"] = self.tracker.run_id
        self.members.start_tracking(self.tracker, self.members.load_state(self.meta.get("members")), not resumed_from)
        self._announce(resumed_from)
        self.log = StepLog(self.out / "metrics.jsonl", self.tracker, cfg.train.log_every_steps, dist.is_main)
        if dist.is_main:
            self.log.truncate(self.position.step)  # drop steps a killed run logged after its last checkpoint
        self.last_eval: list[Metrics] | None = None
        self.bar: Progress | None = None
        self.loss_sum = torch.zeros(len(self.members), dtype=torch.float64)
        self.lr = [0.0] * len(self.members)
        self.stop = StopRequest()  # from here on a signal means "checkpoint, then exit"
        self.clock = CheckpointClock(cfg.train.ckpt_every_minutes)
        self.stopped = self.clock_due = False

    def _micro_batch_flops(self) -> float:
        """Counted on a meta copy built like the model (no weights file read, no feature gathering, not sharded)."""
        cfg = replace(self.cfg, model=replace(self.cfg.model, checkpoint=None, shard_frozen=False))

        def meta_model(device: torch.device) -> torch.nn.Module:
            model = build_model(cfg, self.train_loader.num_classes, device, members=self.member_cfgs)
            if hasattr(model, "feature_gather"):
                model.feature_gather = None
            return model

        return flops_per_micro_batch(cfg, meta_model)

    def _resume(self, resume: str | None) -> Path | None:
        if not resume:
            return None
        path = ckpt.latest_checkpoint(self.ckpt_root) if resume == "auto" else Path(resume)
        if path is None:
            print(f"[s4v] no checkpoint under {self.ckpt_root}; starting from scratch", flush=True)
            return None
        previous = ckpt.check_resumable(path, self.cfg, self.meta)
        ckpt.load_checkpoint(self.engine, self.view, path, self.position, self.meta)
        self.meta["mlflow_run_id"] = previous.get("mlflow_run_id")
        self.meta["members"] = previous.get("members")
        self.guard.consecutive = list((self.meta["members"] or {}).get("bad_in_a_row", self.guard.consecutive))
        return path

    def _announce(self, resumed_from: Path | None) -> None:
        """Run parameters to MLflow (once per run, not again on resume) and a one-line summary."""
        cfg, dist, plan = self.cfg, self.dist, self.plan
        n_trainable = sum(p.numel() for p in self.model.trainable_parameters())
        n_frozen = sum(p.numel() for p in self.model.backbone.parameters())
        if resumed_from is None:
            self.tracker.log_params(flatten(to_dict(cfg)))
            self.tracker.log_params(flatten({"ds": self.ds}))
            self.tracker.log_params(
                {
                    "world_size": dist.world_size,
                    "accumulation_steps": plan.accumulation,
                    "steps_per_epoch": self.steps_per_epoch,
                    "trainable_params": n_trainable,
                    "frozen_params": n_frozen,
                    "device": dist.device.type,
                }
            )
        if dist.is_main:
            print(
                f"[s4v] {cfg.model.kind} on {cfg.model.preset}: {n_trainable:,} trainable / {n_frozen:,} frozen "
                f"params; {dist.world_size} rank(s) on {dist.device.type}, {self.dtype}; global batch "
                f"{plan.global_batch} = {plan.micro_batch} x {dist.world_size} x {plan.accumulation}; "
                f"{self.steps_per_epoch} steps/epoch x {cfg.optim.epochs} epochs"
                + (f"; resumed from {resumed_from} at {self.position.state_dict()}" if resumed_from else ""),
                flush=True,
            )

    def train(self) -> dict[str, Any]:
        """Epochs from the current position to the last one or to `train.max_steps`, then the export;
        a stop signal ends it after a checkpoint of the current step instead (`result["stopped"]`)."""
        pos = self.position
        while pos.epoch < self.cfg.optim.epochs and pos.step < self.max_steps and not self.stopped:
            self.start_epoch()
            for batch in self.timer.batches(self.train_loader.iter_from(pos.videos)):
                if pos.videos >= self.videos_per_epoch or pos.step >= self.max_steps:
                    break
                if self.train_step(batch) and self.checkpoint_if_due():
                    break
            if self.bar is not None:
                self.bar.close()
            if self.stopped and pos.videos < self.videos_per_epoch:
                break  # checkpoint_if_due saved this step
            if pos.step >= self.max_steps and pos.videos < self.videos_per_epoch:
                self.save()  # stopped by max_steps mid-epoch: a resumed run continues inside this epoch
                break
            pos.next_epoch()
            self.save()
            every = self.cfg.train.eval_every_epochs
            due = every and (pos.epoch % every == 0 or pos.epoch == self.cfg.optim.epochs)
            if due and not self.stopped and not self._agree_stop():
                self.evaluate()
        self.stop.close()
        finished = pos.step >= self.max_steps or pos.epoch >= self.cfg.optim.epochs
        return self.close() if finished or not self.stopped else self.stop_here()

    def start_epoch(self) -> None:
        pos = self.position
        self.train_loader.set_epoch(pos.epoch)
        if self.dist.is_main and self.cfg.train.progress:
            self.bar = progress(
                self.steps_per_epoch,
                f"epoch {pos.epoch + 1}",
                initial=pos.videos // self.plan.global_batch,
                every_steps=self.cfg.train.log_every_steps,
            )
        self.loss_sum.zero_()
        self.timer = StepTimer(self.dist.device)  # an evaluation or a save between epochs is no step time
        self.lr = self._member_lrs()

    def _member_lrs(self) -> list[float]:
        """Each member's lr: its group's (retrieval's one member: the new modules, after the CLIP parts)."""
        lrs = self.engine.get_lr()
        return lrs[-1:] if len(self.members) == 1 else lrs

    def train_step(self, batch: Batch) -> bool:
        """Forward and backward of one micro-batch; DeepSpeed steps the optimizer after `accumulation`
        of them. Returns whether this micro-batch completed an optimizer step (which is then logged)."""
        batch = {**batch, "video": batch["video"].to(self.dist.device, self.dtype, non_blocking=True)}
        micro = self.position.videos // self.train_loader.videos_per_batch  # of this epoch, at this world size
        if micro % self.plan.accumulation == 0:
            self.guard.start_window()
            self.members.grad_bad.zero_()
        losses = self.task.loss(self.engine, batch, self.position.epoch)  # (K,): one per member
        finite = torch.isfinite(losses).tolist()
        # A member's non-finite loss (or a failed member's) is replaced by a zero one, so its gradients
        # are zeros, never NaN: the members' backward passes stay apart and DeepSpeed sees finite grads.
        total = sum(
            losses[k] if finite[k] and k not in self.guard.failed else self.members.zero_loss(k)
            for k in range(len(self.members))
        )
        self.engine.backward(total)
        self.loss_sum += losses.detach().double().cpu()
        boundary = (micro + 1) % self.plan.accumulation == 0
        if boundary:
            mean_losses, grad_bad = self._reduce_step()
            not_finite = {k for k, v in enumerate(mean_losses) if not math.isfinite(v)}
            self.optimizer.refuse(not_finite | grad_bad | set(self.guard.failed))
        self.engine.step()
        videos = batch["index"].unique_consecutive().tolist()  # a video's R repeated clips are adjacent
        self.guard.paths += [self.train_loader.records[i].path for i in videos]
        self.position.videos = self.train_loader.consumed
        if not boundary:
            return False
        self.position.step += 1
        self._after_step(mean_losses, grad_bad | self.optimizer.take_bad())
        self._log_step(mean_losses)
        return True

    def _reduce_step(self) -> tuple[list[float], set[int]]:
        """One collective per step: the members' mean losses, the members whose gradients were not finite on
        some rank, and whether any rank was signalled to stop or is due a wall-clock checkpoint, so every
        rank takes the same decisions."""
        k = len(self.members)
        local = [*(self.loss_sum / self.plan.accumulation).tolist(), *self.members.grad_bad.tolist()]
        totals = all_reduce_sum(torch.tensor([*local, self.stop.requested, self.clock.due], dtype=torch.float64))
        totals = totals.tolist()
        self.stopped, self.clock_due = totals[-2] > 0, totals[-1] > 0
        return [t / self.dist.world_size for t in totals[:k]], {i for i in range(k) if totals[k + i] > 0}

    def _after_step(self, mean_losses: list[float], refused: set[int]) -> None:
        """Per member: a bad step is skipped (its statistics restored), too many and it has failed."""
        applied = self.engine.was_step_applied()
        bad = self.guard.bad_members(mean_losses, refused, applied, self.dtype == torch.float16)
        for k in self.guard.failed:  # a failed member's forwards still ran: keep its last good statistics
            self.guard.restore(k)
        try:
            newly_failed = self.guard.bad_step(self.position.step, bad, mean_losses, self._report_skip) if bad else []
        except UserError:
            if self.dist.is_main:
                self.members.finish("FAILED")
                self.tracker.finish("FAILED")
            raise
        for k in newly_failed:
            self._member_failed(k)
        self.guard.good_steps([k for k in range(len(self.members)) if k not in bad])
        if len(bad) + len(self.guard.failed) < len(self.members) + len(newly_failed):
            self.task.after_step(self.model)

    def _member_failed(self, k: int) -> None:
        why = self.guard.failed[k]
        self.members.fail(k)
        if self.dist.is_main:
            left = len(self.members) - len(self.guard.failed)
            print(f"[s4v] member {self.members.names[k]} failed: {why}; {left} member(s) train on", flush=True)

    def _report_skip(self, message: str) -> None:
        if self.dist.is_main:
            print(f"[s4v] {message}", flush=True)
            self.tracker.log_metrics({"train/skipped_steps": sum(self.guard.skipped)}, self.position.step)

    def _log_step(self, mean_losses: list[float]) -> None:
        step_s, wait_s = self.timer.lap()
        flops = self.flops_per_step / step_s  # this rank's achieved FLOP/s
        active = [k for k in range(len(self.members)) if k not in self.guard.failed] or [0]
        mean_loss = sum(mean_losses[k] for k in active) / len(active)
        record = {
            "epoch": self.position.epoch,
            "loss": mean_loss,
            "lr": self.lr[active[0]],
            "step_s": step_s,
            "data_wait_s": wait_s,
            "clips_per_s": self.plan.global_batch * self.cfg.data.num_repeats / step_s,  # batches count videos
            "tflops": flops / 1e12,
            "mfu": mfu(self.flops_per_step, step_s, self.peak),
            "peak_mem_mb": peak_memory_mb(self.dist.device),
        }
        if self.members.sweep:  # each member's curve, in metrics.jsonl and in its MLflow child run
            for k, name in enumerate(self.members.names):
                record[f"loss/{name}"], record[f"lr/{name}"] = mean_losses[k], self.lr[k]
                if self.dist.is_main and k not in self.guard.failed and math.isfinite(mean_losses[k]):
                    if self.position.step % max(1, self.cfg.train.log_every_steps) == 0:
                        self.members.tracker_of(k, self.tracker).log_metrics(
                            {"train/loss": mean_losses[k], "train/lr": self.lr[k]}, self.position.step
                        )
        self.log.write(self.position.step, record)
        if self.bar is not None:
            extra = {} if record["mfu"] is None else {"mfu": f"{record['mfu']:.1%}"}
            self.bar.set_postfix(
                loss=f"{mean_loss:.4f}", lr=f"{record['lr']:.2e}", clips_s=f"{record['clips_per_s']:.1f}",
                wait_s=f"{wait_s:.2f}", **extra,
            )  # fmt: skip
            self.bar.update(1)
        self.loss_sum.zero_()
        self.lr = self._member_lrs()

    def checkpoint_if_due(self) -> bool:
        """After a step: a checkpoint every `train.ckpt_every_steps` steps or `train.ckpt_every_minutes`
        minutes inside an epoch (epoch ends always save), and one before a stop. Returns whether to stop."""
        every = self.cfg.train.ckpt_every_steps
        pos = self.position
        by_steps = every and pos.step % every == 0
        if (by_steps or self.clock_due or self.stopped) and pos.videos < self.videos_per_epoch:
            self.save()
        return self.stopped

    def _agree_stop(self) -> bool:
        """Collective: whether any rank has been signalled (checked before an evaluation, which may
        outlast a launcher's grace time)."""
        self.stopped = all_reduce_sum(torch.tensor([float(self.stop.requested)])).item() > 0
        return self.stopped

    def save(self) -> Path:
        """Collective: a checkpoint of the current position."""
        self.guard.check_finite(self.view, "a checkpoint", self.position.step)
        self.meta["members"] = {**self.members.state(), "bad_in_a_row": self.guard.consecutive}
        path = ckpt.save_checkpoint(
            self.engine, self.view, self.ckpt_root, self.position, self.cfg, self.meta, self.cfg.train.keep_checkpoints
        )
        self.clock.reset()
        return path

    def stop_here(self) -> dict[str, Any]:
        """End of a stopped run: the checkpoint is written; tracking stays resumable, nothing is exported."""
        name = "a signal to another rank" if self.stop.signal is None else signal.Signals(self.stop.signal).name
        if self.dist.is_main:
            print(
                f"[s4v] stopped by {name} at step {self.position.step} (epoch {self.position.epoch}, "
                f"{self.position.videos} videos in); checkpoint {ckpt.latest_checkpoint(self.ckpt_root)}; "
                f"exit {EXIT_STOPPED}, continue with --resume",
                flush=True,
            )
            self.members.finish("KILLED")
            self.tracker.finish("KILLED")
        barrier()
        return {"steps": self.position.step, "stopped": name, "wall_s": time.perf_counter() - self.t_start}

    def evaluate(self) -> list[Metrics]:
        """Collective: evaluate every member on the validation split (one frozen pass); rank 0 reports,
        prints and tracks each result."""
        self.last_eval = results = self.task.evaluate(self.model, self.val_loader)
        epoch, step = self.position.epoch, self.position.step
        self.members.record_eval(self.task, results, epoch, step)
        if not self.dist.is_main:
            return results
        for k, metrics in enumerate(results):
            if k in self.guard.failed:
                continue
            out = self.members.member_dir(self.out, k) if self.members.sweep else self.out
            self.task.write_report(metrics, out / "eval", f"epoch_{epoch:03d}")
            who = f" {self.members.names[k]}" if self.members.sweep else ""
            print(f"[s4v] eval after epoch {epoch}{who}: {self.task.summary(metrics)}", flush=True)
            tracked = {f"val/{key}": v for key, v in self.task.tracked(metrics).items()}
            self.members.tracker_of(k, self.tracker).log_metrics(tracked, step)
        if self.members.sweep:
            self.members.report(self.out, self._metric(), step)
        return results

    def _metric(self) -> str:
        """The metric a sweep report ranks members by: the task's first tracked one (top-1, t2v R@1)."""
        return next(iter(self.task.tracked(self.last_eval[0]))) if self.last_eval else "top1"

    def close(self) -> dict[str, Any]:
        """Rank 0 exports the trainable state (`final/`, a sweep's members under `members/`), writes
        `result.json` and closes tracking."""
        step = self.position.step
        result: dict[str, Any] = {"steps": step, "wall_s": time.perf_counter() - self.t_start, "eval": self.last_eval}
        self.guard.check_finite(self.view, "final/", self.position.step)
        if self.dist.is_main:
            meta = {**self.meta, "step": step}
            finals = (
                self.members.export(self.out, meta, step)
                if self.members.sweep
                else [ckpt.export_trainable(self.view, self.out / "final", self.cfg, meta)]
            )
            headline = {k: v for k, v in result.items() if k != "eval"}
            for k, final in enumerate(finals):
                if final is None:
                    continue
                member_eval = self.last_eval[k] if self.last_eval else None
                if member_eval is not None:
                    self.task.write_report(member_eval, final, "eval")
                tracker = self.members.tracker_of(k, self.tracker)
                tracker.log_artifacts(final, "final")
                if self.members.sweep:
                    tracker.finish()
                    headline.setdefault("members", {})[self.members.names[k]] = self.task.headline(member_eval)
                else:
                    headline |= self.task.headline(member_eval)
            if self.members.sweep:
                self.members.report(self.out, self._metric(), step)
                for name in ("sweep.md", "sweep.json", "sweep.png"):
                    self.tracker.log_artifact(self.out / name)
            self.tracker.log_metrics({"train/wall_s": result["wall_s"]}, step)
            self.tracker.finish()
            (self.out / "result.json").write_text(json.dumps(headline, indent=2))
        barrier()
        return result


def train(
    cfg: Config, ds_path: str | Path, ds_overrides: dict[str, Any] | None = None, resume: str | None = None
) -> dict[str, Any]:
    """Run the job described by `cfg`; `resume` is "auto" (latest checkpoint of out_dir) or a directory."""
    return Trainer(cfg, ds_path, ds_overrides, resume).train()
