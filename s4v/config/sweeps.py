"""Sweeps: the members one run trains side by side on a single frozen pass.

A `sweep` section lists them, as a grid (`sweep.grid`: dotted keys -> lists of values, their Cartesian
product) and/or a list of override mappings (`sweep.members`); with both, every listed member is crossed
with every grid point. A run without a sweep is a sweep of its one base member. Members may differ only in
what concerns their own side network and its optimisation (`SWEEPABLE`): everything else (tower, weights,
data, frames, batch sizes, epochs, task) is the shared frozen pass and its data order, so a member's key
outside that set is refused at load. An optional `sweep.halving` section culls members at rungs during
training (`s4v.train.halving`); its values and what it needs of the run are checked here too.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from s4v.config.checks import check_data, check_preset
from s4v.config.schema import Config, HalvingConfig, SweepConfig, flatten
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
    """The sweep's keys are sweepable, its grid values lists and its halving section sound on its own (one-line
    errors at config load); what halving needs of the run is `check_sweepable_run`'s."""
    if sweep.halving is not None:
        _check_halving(sweep.halving)
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
    halving = cfg.sweep.halving
    if not is_sweep(cfg):
        if halving is not None:
            raise UserError(
                "sweep.halving: halving needs a sweep to choose from (set sweep.grid or sweep.members, "
                "or leave sweep.halving out)"
            )
        return
    if cfg.model.kind != "side4video":
        raise UserError(f"sweep: members are side networks; model.kind={cfg.model.kind!r} has none (use side4video)")
    seeded = any("train.seed" in o for o in member_overrides(cfg.sweep))
    if seeded and cfg.model.checkpoint is None:
        # A random-init tower is drawn from train.seed: a member's own seed would give its run alone (and
        # its export) another tower than the sweep's, which is the base seed's.
        raise UserError("sweep: train.seed members need the tower from a weights file (model.checkpoint)")
    if cfg.model.task == "retrieval":
        # Named after the section the user set, halving included: that is the key to change.
        raise UserError(
            f"{'sweep.halving' if halving else 'sweep'}: retrieval sweeps are not supported yet (each member "
            "would need its own text tower); sweep a recognition preset, or run one retrieval config per job"
        )
    if halving is not None:
        _check_halving_run(halving, cfg)


def _check_halving(halving: HalvingConfig) -> None:
    """`sweep.halving` on its own: eta and the rungs' shape (their place in the run: `_check_halving_run`)."""
    if halving.eta < 2:
        raise UserError(
            f"sweep.halving.eta: {halving.eta} < 2; each rung keeps the best 1/eta of the live members "
            "(2 halves them, 3 keeps a third)"
        )
    rungs = halving.rungs
    if rungs is None:
        return
    if not rungs:
        raise UserError(
            "sweep.halving.rungs: an empty list; give the epochs after which to decide, or leave it out "
            "for the default (geometric, the last at 1/eta of the run)"
        )
    for r in rungs:
        # The field type checks only that it is a list (s4v.config.typed); YAML `true` is no epoch count.
        if isinstance(r, bool) or not isinstance(r, int | float) or not math.isfinite(r) or r <= 0:
            raise UserError(f"sweep.halving.rungs: {r!r} is not a positive number of epochs (in {rungs})")
    if any(b <= a for a, b in itertools.pairwise(rungs)):
        raise UserError(f"sweep.halving.rungs: {rungs} must increase (each rung decides after more training)")


def _check_halving_run(halving: HalvingConfig, cfg: Config) -> None:
    """What halving needs of the run: members to choose from, rungs inside it, a selection split."""
    count = len(member_overrides(cfg.sweep))
    if count < 2:
        raise UserError(f"sweep.halving: the sweep has {count} member; halving needs at least 2 to choose from")
    epochs = cfg.optim.epochs
    late = [r for r in halving.rungs or () if r >= epochs]
    if late:
        raise UserError(
            f"sweep.halving.rungs: {late[0]} is not before the end of the run (optim.epochs={epochs}); "
            "a decision after the last epoch has no training left to save"
        )
    if halving.select == "heldout" and not (cfg.data.heldout_fraction > 0 or cfg.data.heldout_list):
        raise UserError(
            "sweep.halving.select: heldout (the default) ranks members on videos held out of the training list; "
            "set data.heldout_fraction (e.g. 0.1) or data.heldout_list, or sweep.halving.select=val "
            "(its figure is then optimistic)"
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
