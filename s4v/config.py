"""Typed run configuration: dataclasses, a YAML file, then `key.sub=value` overrides from the command line.

One `Config` describes a whole run (model, data, recipe, run control, tracking). The DeepSpeed JSON holds
only the *system* side (precision, ZeRO stage, communication); the recipe values DeepSpeed needs (batch
sizes, accumulation, clipping) are derived from this config so the two files cannot disagree.
Values are checked against the dataclass field types, so a typo or a wrong type fails before training.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from s4v.data.config import DataConfig


@dataclass
class ModelConfig:
    """Which preset (paper Table 1) and model kind; the frozen tower's weights from a local file."""

    task: str = "recognition"  # "recognition" | "retrieval" (text-video; presets from RETRIEVAL_PRESETS)
    preset: str = "tiny"
    kind: str = "side4video"  # "side4video" | "meanpool" (order-invariant frozen-[CLS] probe / CLIP4Clip frozen)
    checkpoint: str | None = None  # open_clip / EVA-CLIP weights file; None: random init (seeded)
    attn_backend: str = "sdpa"
    dropout: float | None = None  # head dropout; None: the preset's value
    matching: str = "token"  # retrieval: "token" (token-wise, DRL/FILIP) | "global" (mean-pooled)
    text_length: int = 32  # retrieval: caption tokens


@dataclass
class OptimConfig:
    """Training recipe (paper Table 12). `batch_size` is the *global* batch; DeepSpeed gets the split."""

    lr: float = 1e-3
    clip_lr: float | None = None  # retrieval: lr of the pretrained CLIP parts (recipe 1e-7); None: lr
    batch_size: int = 128
    epochs: int = 30
    warmup_epochs: float = 4.0
    min_lr: float = 0.0
    weight_decay: float = 0.15  # on every trainable tensor, as the reference implementation does
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    label_smoothing: float = 0.1
    clip_grad: float = 0.0  # max global grad norm; 0 disables (the reference does not clip)


@dataclass
class TrainConfig:
    """Run control: where outputs go, how often to checkpoint, evaluate and log."""

    out_dir: str = "runs/default"
    seed: int = 0
    ckpt_every_steps: int = 0  # 0: only at epoch ends
    keep_checkpoints: int = 2
    eval_every_epochs: int = 1  # 0: no evaluation during training
    log_every_steps: int = 1
    max_steps: int = 0  # stop after this many optimizer steps (0: run all epochs); for smoke tests
    progress: bool = True  # tqdm bar on rank 0
    threads_per_rank: int = 0  # CPU intra-op threads per rank; 0: cores / local ranks


@dataclass
class TrackingConfig:
    """MLflow on rank 0. `uri=None` uses $MLFLOW_TRACKING_URI, else the embedded `sqlite:///mlflow.db`."""

    enabled: bool = True
    uri: str | None = None
    experiment: str = "s4v"
    run_name: str | None = None
    system_metrics: bool = True
    system_metrics_interval: float = 10.0  # seconds between psutil samples


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(root="data/synth"))
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file <- `section.key=value` overrides (values parsed as YAML scalars/lists)."""
    tree: dict[str, Any] = {}
    if path is not None:
        tree = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(tree, dict):
            raise ValueError(f"{path}: top level must be a mapping of sections")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        node = tree
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
        node[leaf] = yaml.safe_load(raw) if raw.strip() else None
    return build(Config, tree, "")


def build(cls: type, tree: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass `cls` from a nested dict, checking names and types (unknown keys fail)."""
    if not isinstance(tree, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {tree!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in tree:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown config key {where}{key!r}{hint}; known: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in tree:
            continue
        tp, value = hints[f.name], tree[f.name]
        if dataclasses.is_dataclass(tp):
            base = dataclasses.asdict(_default(cls, f)) if _has_default(f) else {}
            kwargs[f.name] = build(tp, {**base, **(value or {})}, f"{where}{f.name}.")
        else:
            kwargs[f.name] = _coerce(value, tp, f"{where}{f.name}")
    return cls(**kwargs)


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _default(cls: type, f: dataclasses.Field) -> Any:
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
            except ValueError as e:
                errors.append(str(e))
        raise ValueError("; ".join(errors))
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ValueError(f"{name}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, name) for v, a in zip(value, args, strict=True))
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
    raise ValueError(f"{name}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML and JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 1e-3}} -> {'optim.lr': 1e-3}: the names MLflow params and overrides use."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
