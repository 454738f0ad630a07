"""Loading a run config: defaults <- a YAML file <- `section.key=value` overrides, then every load-time check.

This is the one entry that turns text into a checked `Config`: parsing (YAML and the override syntax)
lives here, typing in `s4v.config.typed`, the checks in `s4v.config.checks` and `s4v.config.sweeps`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from s4v.config.checks import check_data, check_preset
from s4v.config.schema import Config
from s4v.config.sweeps import MemberSpec, check_sweep, check_sweepable_run, resolve_members
from s4v.config.typed import build
from s4v.core.errors import UserError


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """`load_run` without its members (they are still resolved, so every member's config is checked)."""
    return load_run(path, overrides)[0]


def load_run(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[Config, list[MemberSpec]]:
    """The run's config and its resolved members (one without a `sweep` section).

    Defaults <- YAML file <- `section.key=value` overrides (values parsed as YAML scalars/lists).

    Every mistake found here is a UserError. Whether `data.root` and the weights file exist is left to
    `check_paths`, which the entry points call: a config may describe a machine other than this one.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise UserError(f"config file {str(path)!r} not found")
        tree = _yaml(Path(path).read_text(), str(path)) or {}
        if not isinstance(tree, dict):
            raise UserError(f"{path}: top level must be a mapping of sections")
    for item in overrides:
        _apply_override(tree, item)
    cfg = build(Config, tree, "")
    check_preset(cfg)
    check_data(cfg)
    check_sweep(cfg.sweep)
    check_sweepable_run(cfg)
    if cfg.train.ckpt_every_minutes < 0:
        raise UserError(
            f"train.ckpt_every_minutes: {cfg.train.ckpt_every_minutes} < 0 (0 turns wall-clock checkpoints off)"
        )
    return cfg, resolve_members(cfg)  # every member's config is checked as a run's own would be


def _apply_override(tree: dict[str, Any], item: str) -> None:
    """Set `section.key=value` in `tree`, creating the sections it names; an empty value is null."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise UserError(f"override {item!r} is not of the form section.key=value")
    node = tree
    *parents, leaf = key.strip().split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UserError(f"override {item!r}: {p!r} is not a section")
    node[leaf] = _yaml(raw, f"override {item!r}") if raw.strip() else None


def _yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        # PyYAML's own text spans several lines (it quotes the source); the problem and position fit one.
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{where}: invalid YAML: {getattr(e, 'problem', None) or e}{at}") from None
