"""Training state that no world size or ZeRO stage shapes: the side network's fp32 master weights, Adam
moments and step counts, the LR schedule and DeepSpeed's step counters, one tensor per parameter name.

DeepSpeed's own checkpoint files hold one partition per data-parallel rank, and its ZeRO optimizers
refuse to load them on another world size. Beside them rank 0 writes `elastic.pt`, gathered through
DeepSpeed's per-parameter accessors (`safe_get_full_fp32_param`, `safe_get_full_optimizer_state`, the
fragments its universal checkpoint is made of), and a run on another world size or stage loads it back
through the `safe_set_full_*` twins. Values are copied, never recomputed, so the consolidated state after
loading equals the saved one bit for bit. The side network is small beside the tower, so the full copy
rank 0 holds while saving costs little.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

ELASTIC_FILE = "elastic.pt"
FORMAT = 1
MOMENTS = ("exp_avg", "exp_avg_sq")  # AdamW's per-parameter state besides its step count
_COUNTERS = ("global_steps", "global_samples", "skipped_steps")  # DeepSpeed engine attributes


def base_optimizer(engine: DeepSpeedEngine) -> torch.optim.Optimizer:
    """The torch AdamW under DeepSpeed's wrappers (ZeRO and bf16 optimizers hold it as `.optimizer`)."""
    opt = engine.optimizer
    while not isinstance(opt, torch.optim.AdamW):
        opt = opt.optimizer
    return opt


def _partitioned(engine: DeepSpeedEngine) -> bool:
    """Whether DeepSpeed keeps the fp32 masters apart from the parameters (ZeRO 1-3, its bf16 optimizer);
    otherwise the parameters are AdamW's own, as with fp32 and ZeRO 0."""
    return engine.optimizer is not base_optimizer(engine)


def supported(engine: DeepSpeedEngine, view: nn.Module) -> bool:
    """Whether DeepSpeed offers per-parameter access to the fp32 masters and moments: ZeRO 1-2 and its bf16
    optimizer do. Its fp16 optimizer (also bf16 without ZeRO) keeps unpartitioned fp32 copies without it;
    its files then load on any world size themselves. ZeRO-3 keeps AdamW's state per sub-group, where the
    state this module reads is not (measured: no moments came back), so it is left out."""
    if engine.zero_optimization_stage() == 3:
        return False
    if not _partitioned(engine):
        return True
    return all(hasattr(p, "_hp_mapping") for p in view.parameters())


def _has_state(opt: torch.optim.Optimizer) -> bool:
    return any(opt.state.get(p) for group in opt.param_groups for p in group["params"])


def consolidated(engine: DeepSpeedEngine, view: nn.Module, keep: bool = True) -> dict[str, Any]:
    """Collective: every rank calls it in the same order (the accessors all-reduce each tensor).

    Returns what `elastic.pt` holds and `load_state` reads: fp32 master and moments per parameter name, each
    param group's step count and lr, the scheduler's state, the engine's counters and the module's state (the
    parameters in the compute dtype, BatchNorm statistics). With `keep=False` (the ranks that write nothing)
    each gathered tensor is dropped at once instead of held: the masters, moments and module are then empty.
    """
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    opt, partitioned = base_optimizer(engine), _partitioned(engine)
    stepped = _has_state(opt)  # AdamW creates its state at the first applied step
    if partitioned and stepped:
        # DeepSpeed links its fragments to AdamW's state once, after the first group's first step, so a
        # later group (a sweep's next member, retrieval's CLIP parts) is left unlinked: link them all again.
        engine.optimizer._hp_optimizer_states_linked = False
        engine.optimizer._lazy_init_hp_params_optimizer_state()

    def gathered(param: nn.Parameter, key: str | None) -> torch.Tensor:
        """The full fp32 master (key None) or moment `key` of `param`; collective when partitioned."""
        if partitioned:
            return safe_get_full_fp32_param(param) if key is None else safe_get_full_optimizer_state(param, key)
        return param.float() if key is None else opt.state[param][key]  # the parameters are the masters

    master, moments = {}, {key: {} for key in MOMENTS}
    targets = {None: master, **({key: moments[key] for key in MOMENTS} if stepped else {})}
    for name, param in view.named_parameters():
        for key, into in targets.items():  # the same order on every rank: the accessors are collectives
            value = gathered(param, key)
            if keep:
                into[name] = value.detach().cpu().clone()
    steps = [_group_step(opt, group) for group in opt.param_groups]
    return {
        "format": FORMAT,
        "master": master,
        "moments": moments if stepped else None,
        "steps": steps,
        "lrs": [group["lr"] for group in opt.param_groups],
        "scheduler": engine.lr_scheduler.state_dict(),
        "counters": {k: getattr(engine, k) for k in _COUNTERS},
        "module": {k: v.detach().cpu().clone() for k, v in view.state_dict().items()} if keep else {},
    }


def _group_step(opt: torch.optim.Optimizer, group: dict[str, Any]) -> torch.Tensor | None:
    """A group's step count; its parameters step together, so any one with state holds it."""
    for p in group["params"]:
        if opt.state.get(p):
            return opt.state[p]["step"].detach().cpu().clone()
    return None


def save(engine: DeepSpeedEngine, view: nn.Module, directory: Path) -> None:
    """Collective; rank 0 writes `directory/elastic.pt` (a file every world size reads)."""
    writer = engine.global_rank == 0
    state = consolidated(engine, view, keep=writer)
    if writer:
        tmp = directory / f".{ELASTIC_FILE}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, directory / ELASTIC_FILE)


def load(engine: DeepSpeedEngine, view: nn.Module, directory: Path) -> None:
    """Every rank: restore trainable weights, masters, moments, step counts, lr and schedule from
    `elastic.pt`, whatever world size and ZeRO stage wrote it and whatever this run uses."""
    load_state(engine, view, torch.load(directory / ELASTIC_FILE, map_location="cpu", weights_only=False))


def members_only(state: dict[str, Any], keep: list[int]) -> dict[str, Any]:
    """`state` (a sweep's, from `consolidated`) cut down to the members at model indices
    `keep`, renumbered 0.. in that order: what a model of those members alone loads. A sweep's parameters
    are named `members.<k>.*` and its optimizer has one parameter group per member, in member order."""
    new = {old: k for k, old in enumerate(keep)}

    def renamed(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for name, value in tensors.items():
            _, k, rest = name.split(".", 2)
            if int(k) in new:
                out[f"members.{new[int(k)]}.{rest}"] = value
        return out

    def per_group(values: Any) -> Any:
        return [values[k] for k in keep]

    scheduler = {
        key: per_group(v) if isinstance(v, list) and len(v) == len(state["steps"]) else v
        for key, v in state["scheduler"].items()
    }
    moments = None if state["moments"] is None else {key: renamed(v) for key, v in state["moments"].items()}
    return {
        **state,
        "master": renamed(state["master"]),
        "moments": moments,
        "module": renamed(state["module"]),
        "steps": per_group(state["steps"]),
        "lrs": per_group(state["lrs"]),
        "scheduler": scheduler,
    }


def load_state(engine: DeepSpeedEngine, view: nn.Module, state: dict[str, Any]) -> None:
    """Every rank: `load` from a state already in memory."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    view.load_state_dict(state["module"])  # parameters in the compute dtype, BatchNorm statistics
    opt, partitioned = base_optimizer(engine), _partitioned(engine)
    if state["moments"] is not None:
        _create_state(opt, state["steps"])
        if partitioned:
            engine.optimizer._lazy_init_hp_params_optimizer_state()
    for name, param in view.named_parameters():
        master = state["master"][name].to(param.device)
        if partitioned:
            safe_set_full_fp32_param(param, master)
        else:
            param.data.copy_(master)
        for key in MOMENTS if state["moments"] is not None else ():
            value = state["moments"][key][name].to(param.device)
            if partitioned:
                safe_set_full_optimizer_state(param, value, key)
            else:
                opt.state[param][key].copy_(value)
    for group, lr in zip(opt.param_groups, state["lrs"], strict=True):
        group["lr"] = lr
    engine.lr_scheduler.load_state_dict(state["scheduler"])
    for key, value in state["counters"].items():
        setattr(engine, key, value)


def _create_state(opt: torch.optim.Optimizer, steps: list[torch.Tensor | None]) -> None:
    """AdamW's state as its first step would create it, at the saved step counts; the moments are then
    overwritten with the saved ones (partitioned optimizers link their fragments to these tensors)."""
    for group, step in zip(opt.param_groups, steps, strict=True):
        for p in group["params"] if step is not None else ():
            opt.state[p] = {"step": step.clone(), **{k: torch.zeros_like(p) for k in MOMENTS}}
