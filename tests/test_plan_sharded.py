"""Accounting one of N data-parallel ranks: sharded frozen tower, ZeRO partitions, and `s4v plan` with them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from s4v.memory.plan import Planner
from s4v.memory.plan import cli as plan_cli
from s4v.memory.step import Parallel, Workload, account_step
from s4v.memory.tracker import block_bytes
from s4v.memory.workloads import MethodSpec, workload

REPO = Path(__file__).resolve().parents[1]
SPEC = MethodSpec("side4video", "tiny", 2, options=dict(layers=2, dim=64))


def _frozen_and_trainable() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    model = workload(SPEC).build(torch.device("meta"))
    params = list(model.parameters())
    return [p for p in params if not p.requires_grad], [p for p in params if p.requires_grad]


def test_sharded_frozen_tower_holds_padded_dim0_shards_and_two_gathered_blocks() -> None:
    ranks = 3  # 3 divides none of the tiny tower's widths: every shard is padded
    plain = account_step(workload(SPEC), "fp32", "flash")
    sharded = account_step(workload(SPEC), "fp32", "flash", parallel=Parallel(ranks, shard_frozen=True))
    frozen, _ = _frozen_and_trainable()
    rows = [p.shape[0] if p.dim() else 1 for p in frozen]
    shard = [-(-r // ranks) * (p.numel() // r) for p, r in zip(frozen, rows, strict=True)]
    assert sharded.frozen_weights == 4 * sum(shard)
    assert plain.frozen_weights == 4 * sum(p.numel() for p in frozen) > 2.5 * sharded.frozen_weights
    # Peak: every moment holds the shards instead of the full weights, plus at most two gathered blocks.
    saving = sum(block_bytes(4 * p.numel()) for p in frozen) - sum(block_bytes(4 * n) for n in shard)
    block = block_bytes(
        4 * sum(p.numel() for p in workload(SPEC).build(torch.device("meta")).backbone.blocks[0].parameters())
    )
    assert plain.peak - saving <= sharded.peak <= plain.peak - saving + 2 * block
    assert sharded.saved_activations == plain.saved_activations  # each rank's batch is its own


def test_zero_partitions_states_and_gradients_over_the_ranks() -> None:
    """bf16: fp32 master + two fp32 Adam moments (12 B) and a bf16 gradient (2 B) per parameter of the slice."""
    _, trainable = _frozen_and_trainable()
    numel = sum(p.numel() for p in trainable)
    mems = {
        (ranks, stage): account_step(workload(SPEC), "bf16", "flash", parallel=Parallel(ranks, zero_stage=stage))
        for ranks, stage in ((1, 2), (4, 1), (4, 2))
    }
    one, z1, z2 = mems[1, 2], mems[4, 1], mems[4, 2]
    part = -(-numel // 4)
    step_counter = 4  # AdamW's fp32 step tensor
    assert one.optimizer_states == 12 * numel + step_counter and one.grads == 2 * numel
    assert z1.optimizer_states == z2.optimizer_states == 12 * part + step_counter
    assert z1.grads == 2 * numel and z2.grads == 2 * part  # stage 1 keeps every full gradient
    assert z2.trainable_weights == z1.trainable_weights == one.trainable_weights == 2 * numel
    # Fixed bytes: the peak (at the end of the forward here) drops by the partitioned states, up to the
    # allocator's 512-byte rounding of those three tensors (master, two moments). No gradient slice then:
    # DeepSpeed allocates it at the first reduced gradient of a backward and frees it in the step.
    fixed = 12 * (numel - part)
    assert abs((one.peak - z2.peak) - fixed) <= 3 * 512


def test_zero2_step_peak_holds_deepspeeds_fp32_gradient_and_two_adamw_temporaries() -> None:
    """A step-bound workload: the peak is DeepSpeed ZeRO-2's optimizer step, counted by hand.

    bf16 weights (2 B x P), fp32 master and moments (12 B x slice), AdamW's step counter, then the step's
    fp32 gradient of the slice (4 B) and the `exp_avg_sq.sqrt()` and `/ c` temporaries of torch's
    single-tensor AdamW (4 + 4 B): the bf16 slice and its flattened copy are freed before that. The model
    before this accounting held the bf16 slice and one temporary instead: 2 B per slice element less.
    """
    width, ranks = 1024, 2
    spec = Workload(
        "linear",
        lambda device: torch.nn.Linear(width, width, bias=False, device=device),
        lambda device: (torch.zeros(1, width, device=device),),
        lambda model, inputs: model(inputs[0].to(model.weight.dtype)).float().sum(),
    )
    mem = account_step(spec, "bf16", "flash", parallel=Parallel(ranks, zero_stage=2))
    numel = width * width
    part = numel // ranks
    assert mem.grads == 2 * part and mem.optimizer_states == 12 * part + 4
    held = 2 * numel + (4 + 8) * part + 512 + 4 * width  # + the step counter's 512-byte block, the fp32 input
    assert mem.peak == held + (4 + 4 + 4) * part


def test_zero3_partitions_the_weights_too() -> None:
    z2 = account_step(workload(SPEC), "bf16", "flash", parallel=Parallel(4, zero_stage=2))
    z3 = account_step(workload(SPEC), "bf16", "flash", parallel=Parallel(4, zero_stage=3))
    assert z3.trainable_weights < z2.trainable_weights / 3.5
    assert (z3.grads, z3.optimizer_states) == (z2.grads, z2.optimizer_states)


def test_parallel_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="ranks"):
        Parallel(0)
    with pytest.raises(ValueError, match="ZeRO stage"):
        Parallel(2, zero_stage=4)


def test_checkpointing_and_sharding_let_the_planner_fit_more() -> None:
    kwargs = dict(backbone="tiny", budget_gib=0.05, frames=8, precision="fp32", attention="flash", num_classes=174)
    plain = Planner(**kwargs).fit(2, 128)
    lean = Planner(**kwargs, side_checkpoint=True, parallel=Parallel(8, True, 2)).fit(2, 128)
    assert lean.max_batch > plain.max_batch >= 1
    assert lean.fixed_gib < plain.fixed_gib and lean.per_video_gib < plain.per_video_gib


def test_plan_cli_reads_the_zero_stage_of_a_deepspeed_json(tmp_path, capsys) -> None:
    args = ["--gpu-mem", "0.05", "--backbone", "tiny", "--min-batch", "2", "--precision", "fp32"]
    args += ["--layers", "2", "--dims", "64", "128"]
    assert plan_cli(args) == 0
    header = capsys.readouterr().out.splitlines()[-6]  # without the new flags: the header as before them
    assert header.startswith("budget 0.05 GiB (0.05 - reserve 0), backbone tiny, 8 frames, fp32, flash attention (")
    out = tmp_path / "plan.json"
    vite = str(REPO / "ds_configs" / "vite.json")  # bf16, ZeRO stage 1
    assert (
        plan_cli([*args, "--gpus", "8", "--shard-frozen", "--side-checkpoint", "--ds", vite, "--json", str(out)]) == 0
    )
    text = capsys.readouterr().out
    assert "fp32, flash attention, 8 GPUs, frozen tower sharded, ZeRO-1, side blocks checkpointed (" in text
    assert "| layers | width | trainable (M) | max batch (videos) |" in text
    assert json.loads(out.read_text())["settings"]["gpus"] == 8
    with pytest.raises(SystemExit):
        plan_cli([*args, "--ds", vite, "--zero-stage", "2"])
