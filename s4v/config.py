"""Typed run configuration: dataclasses, a YAML file, then `key.sub=value` overrides from the command line.

One `Config` describes a whole run (model, data, recipe, run control, tracking). The DeepSpeed JSON holds
only the *system* side (precision, ZeRO stage, communication); the recipe values DeepSpeed needs (batch
sizes, accumulation, clipping) are derived from this config so the two files cannot disagree.
Values are checked against the dataclass field types (enumerations are `Literal` types) and the preset
against the task and image size, so a typo or a wrong type fails before any process group, loader or
model exists. This module imports neither torch nor DeepSpeed, so that check costs a fraction of a second.
A `sweep` section makes the run several members on one frozen pass; `resolve_members` gives their configs.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import re
import types
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from s4v.choices import AttnBackend, CompileFrozen, Matching, ModelKind, SideOptions, Task, TemporalImpl
from s4v.data.config import DataConfig
from s4v.errors import UserError
from s4v.models.architectures import BACKBONES, PRESETS


@dataclass
class ModelConfig:
    """Which preset (paper Table 1) and model kind; the frozen tower's weights from a local file."""

    task: Task = "recognition"
    preset: str = "tiny"  # a name of s4v.models.architectures.PRESETS whose task is `task`
    kind: ModelKind = "side4video"
    checkpoint: str | None = None  # open_clip / EVA-CLIP weights file; None: random init (seeded)
    attn_backend: AttnBackend = "sdpa"
    temporal_impl: TemporalImpl = "auto"
    compile_frozen: CompileFrozen = "none"  # torch.compile mode of the frozen blocks (s4v.models.backbone)
    shard_frozen: bool = False  # frozen blocks sharded over the data-parallel ranks (s4v.models.sharding)
    side_layers: int | None = None  # side blocks (a divisor of the tower's layers); None: the preset's
    side_dim: int | None = None  # side width (a multiple of 64: 64-dim heads); None: the preset's
    side_checkpoint: bool | None = None  # recompute side blocks in backward; None: the preset's (on for ViT-E)
    dropout: float | None = None  # head dropout; None: the preset's value
    matching: Matching = "wti"
    text_length: int = 32  # retrieval: caption tokens
    side: SideOptions = field(default_factory=SideOptions)  # recognition: the side network's Table 9 variants


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
    ckpt_every_minutes: float = 30.0  # also by wall-clock time inside an epoch; 0: off
    keep_checkpoints: int = 2
    eval_every_epochs: int = 1  # 0: no evaluation during training
    log_every_steps: int = 1
    max_steps: int = 0  # stop after this many optimizer steps (0: run all epochs); for smoke tests
    max_bad_steps: int = 10  # consecutive steps with a non-finite loss or gradient (each skipped) that stop the run
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
class SweepConfig:
    """Side networks trained together on one frozen pass (`s4v.config` (sweeps)): a grid of dotted keys -> value
    lists, and/or a list of override mappings. Empty: one member, the run itself."""

    grid: dict[str, Any] = field(default_factory=dict)
    members: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        # `sweep.grid.optim.lr=[...]` on the command line nests the key; YAML may write it dotted.
        self.grid = flatten(self.grid)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(root="data/synth"))
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file <- `section.key=value` overrides (values parsed as YAML scalars/lists).

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
    cfg = build(Config, tree, "")
    check_preset(cfg)
    check_data(cfg)
    check_sweep(cfg.sweep)
    check_sweepable_run(cfg)
    resolve_members(cfg)  # every member's config is checked as a run's own would be
    if cfg.train.ckpt_every_minutes < 0:
        raise UserError(
            f"train.ckpt_every_minutes: {cfg.train.ckpt_every_minutes} < 0 (0 turns wall-clock checkpoints off)"
        )
    return cfg


def _yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        # PyYAML's own text spans several lines (it quotes the source); the problem and position fit one.
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{where}: invalid YAML: {getattr(e, 'problem', None) or e}{at}") from None


def check_preset(cfg: Config) -> None:
    """`model.preset` is a preset of `model.task`, `data.image_size` its tower's input size; model options agree."""
    name, task = cfg.model.preset, cfg.model.task
    of_task = [n for n, p in PRESETS.items() if p.task == task]
    preset = PRESETS.get(name)
    if preset is None:
        raise UserError(_not_one_of("model.preset", name, of_task))
    if preset.task != task:
        # The preset of the same tower for the asked task is the likely intent ('b16' -> 'b16-retrieval').
        same_tower = [n for n in of_task if PRESETS[n].backbone == preset.backbone]
        close = difflib.get_close_matches(name, same_tower, n=1, cutoff=0.0)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(
            f"model.preset: {name!r} is a {preset.task} preset but model.task is {task!r}; "
            f"{task} presets: {', '.join(map(repr, of_task))}{hint}"
        )
    tower = BACKBONES[preset.backbone]
    if cfg.model.side_layers is not None and not tower.reads_evenly(cfg.model.side_layers):
        raise UserError(
            f"model.side_layers: {cfg.model.side_layers} does not divide the {tower.layers} layers of {name!r}'s tower"
        )
    if cfg.model.side_dim is not None and (cfg.model.side_dim < 64 or cfg.model.side_dim % 64):
        raise UserError(f"model.side_dim: {cfg.model.side_dim} is not a positive multiple of 64 (64-dim heads)")
    if cfg.model.shard_frozen and cfg.model.compile_frozen != "none":
        raise UserError(
            f"model.shard_frozen: a sharded frozen tower runs eagerly; set model.compile_frozen=none "
            f"(got {cfg.model.compile_frozen!r})"
        )
    if cfg.model.side != SideOptions() and (task != "recognition" or cfg.model.kind != "side4video"):
        # The retrieval side network is the reference's own variant (models.retrieval.RETRIEVAL_SIDE).
        raise UserError(
            f"model.side: the Table 9 variants apply to side4video recognition, not {task} {cfg.model.kind}"
        )
    if cfg.model.side_checkpoint and cfg.model.kind != "side4video":
        raise UserError(f"model.side_checkpoint: true but model.kind {cfg.model.kind!r} has no side network")
    if cfg.data.image_size != preset.image_size:
        raise UserError(
            f"data.image_size: {cfg.data.image_size} but preset {name!r} takes {preset.image_size}-pixel frames "
            f"(set data.image_size={preset.image_size})"
        )


def check_data(cfg: Config) -> None:
    """`data` values the field types cannot express: repeated sampling is a count, and recognition's only."""
    repeats = cfg.data.num_repeats
    if repeats < 1:
        raise UserError(f"data.num_repeats: {repeats} is not a positive count of clips per training video")
    if repeats > 1 and cfg.model.task == "retrieval":
        # RetrievalTask.loss samples one caption per batch index, and a video's R clips share its index.
        raise UserError(
            f"data.num_repeats: {repeats} applies to recognition only (Table 12); retrieval's contrastive loss "
            "would take a video's clips, captioned alike, as each other's negatives (set data.num_repeats=1)"
        )


def check_paths(cfg: Config) -> None:
    """What a run reads from this machine exists; the entry points call it before any process group starts."""
    if not Path(cfg.data.root).is_dir():
        raise UserError(f"data.root: {cfg.data.root!r} is not a directory")
    if cfg.data.skip_list is not None and not Path(cfg.data.skip_list).is_file():
        raise UserError(f"data.skip_list: {cfg.data.skip_list!r} is not a file (`s4v data check` writes one)")
    if cfg.model.checkpoint is not None and not Path(cfg.model.checkpoint).is_file():
        raise UserError(
            f"model.checkpoint: {cfg.model.checkpoint!r} is not a file (weights are never downloaded; "
            "pass a local file, or null for a random-init tower)"
        )


def _not_one_of(name: str, value: Any, choices: typing.Sequence[Any]) -> str:
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
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict | None):
                raise UserError(f"{where}{f.name}: expected a mapping of keys, got {value!r}")
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
            except UserError as e:
                errors.append(str(e))
        raise UserError("; ".join(errors))
    if origin is Literal:
        # By type as well as value: YAML's `true` equals 1 but is not the crop count 1.
        if any(type(value) is type(a) and value == a for a in args):
            return value
        raise UserError(_not_one_of(name, value, args))
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


# Sweeps: the members one run trains side by side on a single frozen pass. A `sweep` section lists them,
# as a grid (`sweep.grid`: dotted keys -> lists of values, their Cartesian product) and/or a list of override
# mappings (`sweep.members`); with both, every listed member is crossed with every grid point. A run without a
# sweep is a sweep of its one base member. Members may differ only in what concerns their own side network and
# its optimisation (`SWEEPABLE`): everything else (tower, weights, data, frames, batch sizes, epochs, task) is
# the shared frozen pass and its data order, so a member's key outside that set is refused at load.

# What a member may change: its side network, head and optimisation (train.seed seeds its init).
SWEEPABLE = (
    "model.side_dim",
    "model.side_layers",
    "model.side_checkpoint",
    "model.dropout",
    "model.side.temporal",  # the Table 9 variants (s4v.choices.SideOptions)
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
class Member:
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


def _field(cfg: Config, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
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


def resolve_members(cfg: Config) -> list[Member]:
    """The members of `cfg`'s sweep, each a full config without a sweep; `cfg` alone when it has none."""
    if not is_sweep(cfg):
        return [Member("base", {}, cfg)]
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
        members.append(Member(name, override, member_cfg))
    return members


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
