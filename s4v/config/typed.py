"""Typed building of a config from a nested dict, and back: the schema's types enforced both ways.

`build` turns the YAML tree (after overrides) into the dataclasses of `s4v.config.schema`, checking every
key and value against the field annotations, so a typo or a wrong type is a one-line `UserError` before
any process exists. `to_dict` / `dump_config` go the other way, to plain YAML- and JSON-ready values.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from s4v.config.schema import Config
from s4v.core.errors import UserError


def not_one_of(name: str, value: Any, choices: typing.Sequence[Any]) -> str:
    """`name: value is not one of a, b (did you mean a?)`: the one-line message of every enumeration."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    hint = f" (did you mean {next(c for c in choices if str(c) == close[0])!r}?)" if close else ""
    return f"{name}: {value!r} is not one of {', '.join(map(repr, choices))}{hint}"


def build(cls: type, tree: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass `cls` from a nested dict, checking names and types (unknown keys fail)."""
    if not isinstance(tree, dict):
        raise UserError(f"{where or 'config'}: expected a mapping, got {tree!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in tree:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"unknown config key {where}{key!r}{hint}; known: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in tree:
            continue
        tp, value = hints[f.name], tree[f.name]
        section, optional = _section(tp)
        if section is not None and value is None and optional:
            kwargs[f.name] = None  # an optional section left out (`sweep.halving: null`)
        elif section is not None:
            if not isinstance(value, dict | None):
                raise UserError(f"{where}{f.name}: expected a mapping of keys, got {value!r}")
            # A partial section keeps the defaults of the keys it does not name; an optional one absent by
            # default (None) is made from its class's defaults, so `sweep.halving.eta=2` alone creates it.
            default = _default(f) if _has_default(f) else None
            base = dataclasses.asdict(default) if default is not None else {}
            kwargs[f.name] = build(section, {**base, **(value or {})}, f"{where}{f.name}.")
        else:
            kwargs[f.name] = _coerce(value, tp, f"{where}{f.name}")
    return cls(**kwargs)


def _section(tp: Any) -> tuple[type | None, bool]:
    """(the section's dataclass, whether it may be None) of a field `Section` or `Section | None`; (None,
    False) for a value field."""
    if dataclasses.is_dataclass(tp):
        return tp, False
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        if dataclasses.is_dataclass(inner):
            return inner, True
    return None, False


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Check `value` against a field annotation (int widens to float; lists become tuples)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, name)
            except UserError as e:
                errors.append(str(e))
        raise UserError("; ".join(errors))
    if origin is Literal:
        # By type as well as value: YAML's `true` equals 1 but is not the crop count 1.
        if any(type(value) is type(a) and value == a for a in args):
            return value
        raise UserError(not_one_of(name, value, args))
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise UserError(f"{name}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, name) for v, a in zip(value, args, strict=True))
    if origin in (dict, list):  # free-form sections (the sweep), checked where they are read
        if not isinstance(value, origin):
            raise UserError(f"{name}: expected a {origin.__name__}, got {value!r}")
        return origin(value)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, str, bool) and type(value) is tp:
        return value
    if tp is Any:
        return value
    raise UserError(f"{name}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML and JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
