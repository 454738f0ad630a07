"""Sweeps: the members one run trains side by side on a single frozen pass.

A `sweep` section lists them, as a grid (`sweep.grid`: dotted keys -> lists of values, their Cartesian
product) and/or a list of override mappings (`sweep.members`); with both, every listed member is crossed
with every grid point. A run without a sweep is a sweep of its one base member. Members may differ only in
what concerns their own side network and its optimisation (`SWEEPABLE`): everything else (tower, weights,
data, frames, batch sizes, epochs, task) is the shared frozen pass and its data order, so a member's key
outside that set is refused at load.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from s4v.config.checks import check_data, check_preset
from s4v.config.schema import Config, SweepConfig, flatten
from s4v.config.typed import build, to_dict
from s4v.core.errors import UserError

# What a member may change: its side network, head and optimisation (train.seed seeds its init).
SWEEPABLE = (
    "model.side_dim",
    "model.side_layers",
    "model.side_checkpoint",
    "model.dropout",
    "model.side.temporal",  # the Table 9 variants (s4v.core.choices.SideOptions)
    "model.side.cls_shift",
    "model.side.representation",
    "model.side.layer_choice",
    "model.side.fusion",
    "optim.lr",
    "optim.weight_decay",
    "optim.warmup_epochs",
    "optim.min_lr",
    "optim.label_smoothing",
    "optim.clip_grad",
    "optim.betas",
    "optim.eps",
    "train.seed",
)
MEMBERS_DIR = "members"  # <out_dir>/members/<name>/final/: each member's export
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")  # a member name is a directory name


@dataclass(frozen=True)
class MemberSpec:
    """One configuration of a sweep: its name, the overrides that define it and its resolved config."""

    name: str
    overrides: dict[str, Any]
    cfg: Config


def is_sweep(cfg: Config) -> bool:
    return bool(cfg.sweep.grid or cfg.sweep.members)


def is_sweep_root(directory: Path) -> bool:
    """A sweep's out_dir: its report and the members' exports, no config of its own."""
    return (directory / "sweep.json").is_file() and (directory / MEMBERS_DIR).is_dir()


def member_overrides(sweep: SweepConfig) -> list[dict[str, Any]]:
    """Every member's dotted overrides: each listed member crossed with each grid point, in order."""
    listed = [flatten(m) for m in sweep.members] or [{}]
    keys = list(sweep.grid)
    points = [dict(zip(keys, values, strict=True)) for values in itertools.product(*sweep.grid.values())]
    return [{**m, **p} for m in listed for p in points]


def check_sweep(sweep: SweepConfig) -> None:
    """The sweep's keys are sweepable and its grid values lists (one-line errors at config load)."""
    for key, values in sweep.grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"sweep.grid.{key}: expected a non-empty list of values, got {values!r}")
    for i, member in enumerate(sweep.members):
        if not isinstance(member, dict):
            raise UserError(f"sweep.members[{i}]: expected a mapping of overrides, got {member!r}")
    keys = {*sweep.grid, *(k for m in sweep.members for k in flatten(m))}
    for key in sorted(keys):
        if key not in SWEEPABLE:
            raise UserError(
                f"sweep: {key} is shared by every member (the frozen pass, its data and schedule length are one); "
                f"a member may set only {', '.join(SWEEPABLE)}"
            )


def check_sweepable_run(cfg: Config) -> None:
    """What the shared pass supports: Side4Video recognition members (at load time, before any process)."""
    if not is_sweep(cfg):
        return
    if cfg.model.kind != "side4video":
        raise UserError(f"sweep: members are side networks; model.kind={cfg.model.kind!r} has none (use side4video)")
    seeded = any("train.seed" in o for o in member_overrides(cfg.sweep))
    if seeded and cfg.model.checkpoint is None:
        # A random-init tower is drawn from train.seed: a member's own seed would give its run alone (and
        # its export) another tower than the sweep's, which is the base seed's.
        raise UserError("sweep: train.seed members need the tower from a weights file (model.checkpoint)")
    if cfg.model.task != "retrieval":
        return
    raise UserError(
        "sweep: retrieval sweeps are not supported yet (each member would need its own text tower); "
        "sweep a recognition preset, or run one retrieval config per job"
    )


def resolve_members(cfg: Config) -> list[MemberSpec]:
    """The members of `cfg`'s sweep, each a full config without a sweep; `cfg` alone when it has none."""
    if not is_sweep(cfg):
        return [MemberSpec("base", {}, cfg)]
    base = to_dict(replace(cfg, sweep=SweepConfig()))
    built = []
    for override in member_overrides(cfg.sweep):
        tree = copy.deepcopy(base)
        for key, value in override.items():
            *parents, leaf = key.split(".")
            node = tree
            for p in parents:
                node = node[p]
            node[leaf] = value
        member_cfg = build(Config, tree, "")
        # The values as the config holds them (YAML reads 1.0e12 as a string; the field makes it a float).
        built.append(({key: _field(member_cfg, key) for key in override}, member_cfg))
    members = []
    for name, (override, member_cfg) in zip(_names([o for o, _ in built]), built, strict=True):
        try:
            check_preset(member_cfg)
            check_data(member_cfg)
        except UserError as e:
            raise UserError(f"sweep member {name}: {e}") from None
        members.append(MemberSpec(name, override, member_cfg))
    return members


def _field(cfg: Config, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    # As YAML and JSON write it back (betas is a tuple field), so a member's overrides read like its config.
    return list(value) if isinstance(value, tuple) else value


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "-".join(_value_text(v) for v in value)
    return str(value)


def _names(overrides: list[dict[str, Any]]) -> list[str]:
    """Short names (`lr=0.001,side_dim=128`), full dotted keys where the short ones collide."""
    for short in (True, False):
        names = [
            ",".join(f"{k.rsplit('.', 1)[-1] if short else k}={_value_text(v)}" for k, v in o.items()) or "base"
            for o in overrides
        ]
        names = [_UNSAFE.sub("_", n) for n in names]
        if len(set(names)) == len(names):
            return names
    raise UserError(f"sweep: two members have the same overrides ({names}); each member must differ")
