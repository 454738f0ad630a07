"""The training job: data, model, DeepSpeed engine, loop with exact resume, evaluation, tracking.

One code path for 1 CPU process and N GPUs on M nodes; what differs (device, backend, precision) comes
from the DeepSpeed accelerator and the DeepSpeed JSON. `Trainer` sets a job up; `Trainer.train` is the
loop, and the steps it is made of (a micro-batch, a checkpoint, an evaluation, the export) are methods.
"""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from s4v.config import Config, MemberSpec, resolve_members
from s4v.core.errors import UserError
from s4v.core.preemption import EXIT_STOPPED, StopRequest
from s4v.core.progress import Progress, progress
from s4v.data import build_loader
from s4v.memory.perf import peak_flops
from s4v.train import checkpoint as ckpt
from s4v.train import culling, rebuild
from s4v.train.build import backbone_fingerprint, build_model
from s4v.train.checkpoint import DataPosition
from s4v.train.checkpointer import Checkpointer, find_checkpoint
from s4v.train.culling import halving_plan, select_loader
from s4v.train.distributed import all_reduce_sum, barrier, init_distributed
from s4v.train.engine import build_engine, load_ds_config, plan_batch, resolve_ds_config
from s4v.train.guard import NonFiniteGuard
from s4v.train.layout import RunLayout
from s4v.train.members import MemberSet
from s4v.train.metrics import StepLog, StepTimer, postfix, step_record
from s4v.train.precision import compute_dtype
from s4v.train.setup import micro_batch_flops, run_meta, run_params, run_tracker, schedule, seed_rank, summary
from s4v.train.tasks import Batch, Metrics, make_task


class Trainer:
    """One training job described by a run config and a DeepSpeed JSON; `train()` runs it to the end."""

    def __init__(
        self,
        cfg: Config,
        ds_path: str | Path,
        ds_overrides: dict[str, Any] | None = None,
        resume: str | None = None,
        members: list[MemberSpec] | None = None,
    ) -> None:
        """Build data, model, engine and tracking; `resume` is "auto" (latest checkpoint of out_dir) or a
        directory; `members`: the run's members as `load_run` resolved them (None: resolved here)."""
        t_start = time.perf_counter()
        self.dist = dist = init_distributed(cfg.train.threads_per_rank)
        self.out = Path(cfg.train.out_dir)
        if dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        barrier()
        if cfg.data.device == "cuda":  # GPU decoding (NVDEC) lands on this rank's GPU
            cfg = replace(cfg, data=replace(cfg.data, device=str(dist.device)))
        self.cfg = cfg
        self.train_loader = build_loader(cfg.data, "train", dist.rank, dist.world_size, cfg.train.seed)
        self.val_loader = build_loader(cfg.data, "val", dist.rank, dist.world_size, cfg.train.seed)
        self.plan = plan_batch(cfg.optim, cfg.data.batch_size, dist.world_size)
        self.steps_per_epoch, self.videos_per_epoch, self.max_steps = schedule(cfg, self.train_loader, self.plan)
        self.ds = resolve_ds_config(load_ds_config(ds_path, ds_overrides), cfg, self.plan)
        self.dtype = compute_dtype(self.ds)

        specs = members or resolve_members(cfg)
        path = find_checkpoint(cfg, resume)
        gone = MemberSet.left_names(ckpt.read_meta(path).get("members")) if path else set()
        in_pass = [s for s in specs if s.name not in gone]  # a resumed sweep's members that have not left
        self.task = make_task(cfg, self.dtype, dist.device, self.train_loader, in_pass)
        member_cfgs = [m.cfg for m in in_pass]
        self.model = build_model(cfg, self.train_loader.num_classes, dist.device, self.dtype, member_cfgs)
        fingerprint = backbone_fingerprint(self.model)
        self.engine, self.view, self.optimizer = build_engine(
            self.model, cfg, self.ds, dist, self.steps_per_epoch, member_cfgs
        )
        self.members = MemberSet(RunLayout.of(cfg), specs, getattr(self.model, "members", [self.view]), gone)
        self.members.guard_gradients()
        self.flops_per_step = self.step_flops(member_cfgs)
        self.halving = halving_plan(
            cfg, len(specs), self.steps_per_epoch, self.max_steps, self.step_flops, self.engine, self.view
        )
        self.select_loader = select_loader(cfg, self.halving, dist, self.train_loader)
        self.peak = peak_flops(dist.device, self.dtype)
        self.timer = StepTimer(dist.device)
        seed_rank(cfg.train.seed, dist.rank)  # after every build: the training RNG streams start here
        meta = run_meta(self.train_loader, fingerprint, self.dtype, dist.world_size, self.ds)
        self.checkpoints = Checkpointer(cfg, meta, t_start)
        self.position = DataPosition()
        self.guard = NonFiniteGuard(cfg.train.max_bad_steps, self.checkpoints.latest)
        resumed_from = self.checkpoints.resume(path, self.engine, self.view, self.position, self.members, self.halving)
        self.tracker = run_tracker(cfg, dist.is_main, self.checkpoints.run_id)
        self.checkpoints.track_as(self.tracker.run_id)
        if dist.is_main:
            self.members.start_tracking(self.tracker, fresh=not resumed_from)
        if not resumed_from:  # once per run, not again on resume
            self.tracker.log_params(run_params(cfg, self.ds, dist, self.plan, self.steps_per_epoch, self.model))
        if dist.is_main:
            at = f"; resumed from {resumed_from} at {self.position.state_dict()}" if resumed_from else ""
            line = summary(cfg, dist, self.plan, self.steps_per_epoch, self.model, self.dtype)
            print(f"[s4v] {line}{at}", flush=True)
        self.log = StepLog(self.out / "metrics.jsonl", self.tracker, cfg.train.log_every_steps, dist.is_main)
        if dist.is_main:
            self.log.truncate(self.position.step)  # drop steps a killed run logged after its last checkpoint
        self.last_eval: list[Metrics] | None = None
        self.bar: Progress | None = None
        self.loss_sum = torch.zeros(len(self.members), dtype=torch.float64)
        self.lr = [0.0] * len(self.members)
        self.stop = StopRequest()  # from here on a signal means "checkpoint, then exit"
        self.stopped = self.clock_due = False

    def train(self) -> dict[str, Any]:
        """Epochs from the current position to the last one or to `train.max_steps`, then the export;
        a stop signal ends it after a checkpoint of the current step instead (`result["stopped"]`)."""
        pos = self.position
        while pos.epoch < self.cfg.optim.epochs and pos.step < self.max_steps and not self.stopped:
            self.start_epoch()
            for batch in self.timer.batches(self.train_loader.iter_from(pos.videos)):
                if pos.videos >= self.videos_per_epoch or pos.step >= self.max_steps:
                    break
                if not self.train_step(batch):
                    continue
                if self.leave_if_due():  # members left and the step was checkpointed
                    if self.stopped:
                        break
                elif self.checkpoint_if_due():
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
        self.lr = self.members.lrs(self.optimizer)

    def train_step(self, batch: Batch) -> bool:
        """Forward and backward of one micro-batch; DeepSpeed steps the optimizer after `accumulation`
        of them. Returns whether this micro-batch completed an optimizer step (which is then logged)."""
        batch = {**batch, "video": batch["video"].to(self.dist.device, self.dtype, non_blocking=True)}
        micro = self.position.videos // self.train_loader.videos_per_batch  # of this epoch, at this world size
        if micro % self.plan.accumulation == 0:
            self.guard.start_window(self.members)
            self.members.grad_bad.zero_()
        losses = self.task.loss(self.engine, batch, self.position.epoch)  # (K,): one per member
        self.engine.backward(self.members.total_loss(losses))
        self.loss_sum += losses.detach().double().cpu()
        boundary = (micro + 1) % self.plan.accumulation == 0
        if boundary:
            mean_losses, grad_bad = self._reduce_step()
            not_finite = {k for k, v in enumerate(mean_losses) if not math.isfinite(v)}
            self.optimizer.refuse(not_finite | grad_bad | self.members.failed)
        self.engine.step()
        videos = batch["index"].unique_consecutive().tolist()  # a video's R repeated clips are adjacent
        self.guard.paths += [self.train_loader.records[i].path for i in videos]
        self.position.videos = self.train_loader.consumed
        if not boundary:
            return False
        self.position.step += 1
        if self.halving is not None:
            self.halving.spend(self.flops_per_step)
        self._after_step(mean_losses, grad_bad | self.optimizer.take_bad())
        self._log_step(mean_losses)
        return True

    def _reduce_step(self) -> tuple[list[float], set[int]]:
        """One collective per step: the members' mean losses, the members whose gradients were not finite on
        some rank, and whether any rank was signalled to stop or is due a wall-clock checkpoint, so every
        rank takes the same decisions."""
        k = len(self.members)
        local = [*(self.loss_sum / self.plan.accumulation).tolist(), *self.members.grad_bad.tolist()]
        totals = all_reduce_sum(
            torch.tensor([*local, self.stop.requested, self.checkpoints.clock.due], dtype=torch.float64)
        )
        totals = totals.tolist()
        self.stopped, self.clock_due = totals[-2] > 0, totals[-1] > 0
        return [t / self.dist.world_size for t in totals[:k]], {i for i in range(k) if totals[k + i] > 0}

    def _after_step(self, mean_losses: list[float], refused: set[int]) -> None:
        """Per member: a bad step is skipped (its statistics restored), too many and it has failed."""
        applied = self.engine.was_step_applied()
        bad = self.guard.bad_members(self.members, mean_losses, refused, applied, self.dtype == torch.float16)
        try:
            self.guard.after_step(self.members, self.position.step, bad, mean_losses, self._report)
        except UserError:
            if self.dist.is_main:
                self.members.finish("FAILED")
                self.tracker.finish("FAILED")
            raise
        if bad and self.dist.is_main:
            skipped = sum(m.state.skipped_steps for m in self.members)
            self.tracker.log_metrics({"train/skipped_steps": skipped}, self.position.step)
        if any(k not in bad for k in self.members.live):
            self.task.after_step(self.model)

    def _report(self, message: str) -> None:
        if self.dist.is_main:
            print(f"[s4v] {message}", flush=True)

    def _log_step(self, mean_losses: list[float]) -> None:
        step_s, wait_s = self.timer.lap()
        active = self.members.live or [0]
        mean_loss = sum(mean_losses[k] for k in active) / len(active)
        clips = self.plan.global_batch * self.cfg.data.num_repeats  # batches count videos
        record = step_record(
            self.position.epoch, mean_loss, self.lr[active[0]], step_s, wait_s, clips, self.flops_per_step,
            self.peak, self.dist.device,
        )  # fmt: skip
        record |= self.members.curves(mean_losses, self.lr)  # a sweep's per-member curves
        if self.dist.is_main and self.position.step % max(1, self.cfg.train.log_every_steps) == 0:
            self.members.track_curves(mean_losses, self.lr, self.position.step)
        self.log.write(self.position.step, record)
        if self.bar is not None:
            self.bar.set_postfix(**postfix(record))
            self.bar.update(1)
        self.loss_sum.zero_()
        self.lr = self.members.lrs(self.optimizer)

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
        return self.checkpoints.save(self.engine, self.view, self.position, self.members, self.halving)

    @property
    def num_classes(self) -> int:
        return self.train_loader.num_classes

    def step_flops(self, member_cfgs: list[Config]) -> float:
        """This rank's FLOPs in an optimizer step with these members in the pass (counted on a meta copy)."""
        return self.plan.accumulation * micro_batch_flops(self.cfg, self.num_classes, member_cfgs)

    def leave_if_due(self) -> bool:
        """Collective, after a step: at a halving rung the culled members leave the pass, and so does a member
        that has failed; the pass is rebuilt with the others and checkpointed (at an epoch's end, by the epoch's
        save). Returns whether members left."""
        going: dict[int, dict[str, Any]] = {}
        rung = self.halving.due(self.position.step) if self.halving is not None else None
        if rung is not None:
            going |= culling.decide(
                rung, self.position.step, self.halving, self.task, self.model,
                self.select_loader or self.val_loader, self.members, self.checkpoints.meta, self.dist.is_main,
            )  # fmt: skip
        if self.halving is not None or rebuild.can_shrink(self.engine, self.view):
            step = self.position.step
            going |= {k: {"why": "failed", "step": step} for k in self.members.failed}
        if not going or len(going) == len(self.members):
            return False
        keep = [k for k in range(len(self.members)) if k not in going]
        specs = [self.members[k].spec for k in keep]
        member_cfgs = [s.cfg for s in specs]
        self.model, self.engine, self.view, self.optimizer = rebuild.shrink(
            self.model, self.engine, self.view, keep, self.cfg, member_cfgs, self.ds, self.dist,
            self.steps_per_epoch, self.num_classes,
        )  # fmt: skip
        self.task = make_task(self.cfg, self.dtype, self.dist.device, self.train_loader, specs)
        self.members.leave(going, self.model.members)
        self.flops_per_step = self.step_flops(member_cfgs)
        self.loss_sum = torch.zeros(len(self.members), dtype=torch.float64)
        self.lr = self.members.lrs(self.optimizer)
        if self.position.videos < self.videos_per_epoch:  # an epoch's end saves anyway
            self.save()
        return True

    def stop_here(self) -> dict[str, Any]:
        """End of a stopped run: the checkpoint is written; tracking stays resumable, nothing is exported."""
        name = "a signal to another rank" if self.stop.signal is None else signal.Signals(self.stop.signal).name
        if self.dist.is_main:
            print(
                f"[s4v] stopped by {name} at step {self.position.step} (epoch {self.position.epoch}, "
                f"{self.position.videos} videos in); checkpoint {self.checkpoints.latest()}; "
                f"exit {EXIT_STOPPED}, continue with --resume",
                flush=True,
            )
            self.members.finish("KILLED")
            self.tracker.finish("KILLED")
        barrier()
        return {"steps": self.position.step, "stopped": name, "wall_s": self.checkpoints.wall()}

    def evaluate(self) -> list[Metrics]:
        """Collective: evaluate every member on the validation split (one frozen pass); rank 0 reports,
        prints and tracks each result."""
        self.last_eval = results = self.task.evaluate(self.model, self.val_loader)
        step = self.position.step
        self.members.record_eval(self.task, results, self.position.epoch, step, self.dist.is_main)
        if self.dist.is_main:
            self.members.report(self._metric(), step, self._halving_summary())
        return results

    def _halving_summary(self) -> dict[str, Any] | None:
        return None if self.halving is None else self.halving.summary()

    def _metric(self) -> str:
        """The metric a sweep report ranks members by: the task's first tracked one (top-1, t2v R@1)."""
        return next(iter(self.task.tracked(self.last_eval[0]))) if self.last_eval else "top1"

    def close(self) -> dict[str, Any]:
        """Rank 0 exports the trainable state (`final/`, a sweep's members under `members/`), writes
        `result.json` and closes tracking."""
        step = self.position.step
        result: dict[str, Any] = {"steps": step, "wall_s": self.checkpoints.wall(), "eval": self.last_eval}
        self.guard.check_finite(self.view, "final/", self.position.step)
        if self.dist.is_main:
            headline = {"steps": step, "wall_s": result["wall_s"]}
            headline |= self.members.export(self.task, self.last_eval, self.checkpoints.meta, step)
            for path in self.members.report(self._metric(), step, self._halving_summary()):
                self.tracker.log_artifact(path)
            self.tracker.log_metrics({"train/wall_s": result["wall_s"]}, step)
            self.tracker.finish()
            (self.out / "result.json").write_text(json.dumps(headline, indent=2))
        barrier()
        return result
