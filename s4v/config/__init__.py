"""Typed run configuration: dataclasses, a YAML file, then `key.sub=value` overrides from the command line.

One `Config` describes a whole run (model, data, recipe, run control, tracking). The DeepSpeed JSON holds
only the *system* side (precision, ZeRO stage, communication); the recipe values DeepSpeed needs (batch
sizes, accumulation, clipping) are derived from this config so the two files cannot disagree.
Values are checked against the dataclass field types (enumerations are `Literal` types) and the preset
against the task and image size, so a typo or a wrong type fails before any process group, loader or
model exists. This package imports neither torch nor DeepSpeed, so that check costs a fraction of a second.
A `sweep` section makes the run several members on one frozen pass; `resolve_members` gives their configs.

One module per concern, each importing only those before it in this list (no cycle):
- `schema`: the dataclasses (the sections and their field types) and `flatten`;
- `typed`: `build` (a nested dict to a checked `Config`), `to_dict` and `dump_config` (back to plain values);
- `checks`: what field types cannot express (`check_preset`, `check_data`, `check_paths`);
- `sweeps`: a sweep's members (`SWEEPABLE`, `resolve_members`, ...);
- `load`: `load_config`, the YAML file and `section.key=value` overrides, then the load-time checks.
Callers import from `s4v.config` itself; the names below are its public API.
"""

from __future__ import annotations

from s4v.config.checks import check_data, check_paths, check_preset
from s4v.config.load import load_config, load_run
from s4v.config.schema import (
    Config,
    DataConfig,
    ModelConfig,
    OptimConfig,
    SweepConfig,
    TrackingConfig,
    TrainConfig,
    flatten,
)
from s4v.config.sweeps import (
    MEMBERS_DIR,
    SWEEPABLE,
    MemberSpec,
    check_sweep,
    check_sweepable_run,
    is_sweep,
    is_sweep_root,
    member_overrides,
    resolve_members,
)
from s4v.config.typed import build, dump_config, to_dict

__all__ = [
    "MEMBERS_DIR",
    "SWEEPABLE",
    "Config",
    "DataConfig",
    "MemberSpec",
    "ModelConfig",
    "OptimConfig",
    "SweepConfig",
    "TrackingConfig",
    "TrainConfig",
    "build",
    "check_data",
    "check_paths",
    "check_preset",
    "check_sweep",
    "check_sweepable_run",
    "dump_config",
    "flatten",
    "is_sweep",
    "is_sweep_root",
    "load_config",
    "load_run",
    "member_overrides",
    "resolve_members",
    "to_dict",
]
