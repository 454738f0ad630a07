"""The run configuration's schema: one dataclass per section, their field types and defaults.

The field annotations are the schema itself: `s4v.config.typed.build` reads them (enumerations are
`Literal` types from `s4v.core.choices`) to check a YAML tree, so a field added here is checked with no other
change. Plain `typing` and dataclasses only: no torch, no DeepSpeed, nothing heavy to import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from s4v.core.choices import AttnBackend, CompileFrozen, Matching, ModelKind, SideOptions, Task, TemporalImpl
from s4v.data.config import DataConfig


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


# What successive halving ranks members by: a recognition metric of `s4v.train.tasks` (all higher-is-better),
# and on which split: the held-out part of the training list (`data.heldout_fraction`) or the validation list.
HalvingMetric = Literal["top1", "top5", "mean_class_accuracy"]
HalvingSelect = Literal["heldout", "val"]


@dataclass
class HalvingConfig:
    """Synchronous successive halving of a sweep (`s4v.train.halving`): after each rung every live member is
    scored on the selection split and the best max(1, floor(n / eta)) train on."""

    eta: int = 3
    # Epochs after which to decide (fractions allowed), increasing, each inside the run; None: geometric,
    # the last at 1/eta of the run (`s4v.train.halving.default_fractions`).
    rungs: list[float] | None = None
    metric: HalvingMetric | None = None  # None: the task's first tracked metric (top1)
    select: HalvingSelect = "heldout"  # val: allowed, but its figure is then optimistic (it chose the winner)


@dataclass
class SweepConfig:
    """Side networks trained together on one frozen pass (`s4v.config.sweeps`): a grid of dotted keys -> value
    lists, and/or a list of override mappings. Empty: one member, the run itself."""

    grid: dict[str, Any] = field(default_factory=dict)
    members: list[Any] = field(default_factory=list)
    halving: HalvingConfig | None = None  # None: every member trains to the end

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


# Here rather than beside `to_dict` (s4v.config.typed): `SweepConfig` normalises its grid with it on
# construction, and the schema is the bottom of the package's imports.
def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 1e-3}} -> {'optim.lr': 1e-3}: the names MLflow params and overrides use."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
