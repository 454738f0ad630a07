"""The one table of architecture facts: frozen towers and the presets built on them (paper Table 1).

Plain data with no torch import, so the config loader, `s4v info`, `s4v plan`, the memory tables and
the benchmarks all read the same facts cheaply. Everything else (shapes of tokens, side inputs,
figure axes, kernel benchmark shapes) is derived from these rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from s4v.core.choices import BlockForm, Task


@dataclass(frozen=True)
class Backbone:
    """A frozen image tower as open_clip builds it."""

    open_clip: str  # open_clip model name (OpenAI weights use QuickGELU, hence the -quickgelu configs)
    title: str  # as the paper names it
    width: int  # D
    layers: int  # L
    patch: int  # p
    image_size: int
    # Side-block form: "pre" (CLIP towers) or "post" normalisation (ViT-E: the reference's
    # eva_clip/eva_vit_model.py follows the tower's post-norm blocks).
    block_form: BlockForm
    visual_params_m: float  # frozen visual parameters, millions (Figure 1's x axis)
    paper_batch: int | None = None  # per-GPU batch of the paper's memory tables on this tower

    @property
    def tokenizer(self) -> str:
        """open_clip tokenizer name: each tower's own text config (context length, vocabulary)."""
        return self.open_clip

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch) ** 2

    def reads_evenly(self, side_layers: int) -> bool:
        """Whether `side_layers` side blocks can read this tower at even intervals (paper s.3.3)."""
        return 0 < side_layers <= self.layers and self.layers % side_layers == 0


BACKBONES: dict[str, Backbone] = {
    "tiny": Backbone("s4v-tiny-vit", "tiny ViT", 128, 4, 8, 64, "pre", 0.8),
    "tiny-eva": Backbone("s4v-tiny-eva", "tiny EVA", 64, 4, 8, 64, "post", 0.2),
    "b32": Backbone("ViT-B-32-quickgelu", "ViT-B/32", 768, 12, 32, 224, "pre", 88),
    "b16": Backbone("ViT-B-16-quickgelu", "ViT-B/16", 768, 12, 16, 224, "pre", 86, paper_batch=32),
    "l14": Backbone("ViT-L-14-quickgelu", "ViT-L/14", 1024, 24, 14, 224, "pre", 304, paper_batch=16),
    "e14": Backbone("EVA02-E-14", "ViT-E/14", 1792, 64, 14, 224, "post", 4350, paper_batch=16),
}


@dataclass(frozen=True)
class Preset:
    """A task, a frozen tower and the side network (l layers of width d) that reads it."""

    task: Task
    backbone: str  # key of BACKBONES
    side_layers: int
    side_dim: int
    num_frames: int = 8
    head_dropout: float = 0.0  # the reference's drop_fc is 0 in every config (Recognition/configs/*)
    paper_tunable_m: float | None = None  # Table 2, 174 classes, rounded to whole millions
    paper_gflops_per_view: float | None = None  # Table 2 (3 views: 1 crop x 3 clips) / Table 4, 8 frames
    # Recompute each side block in backward instead of keeping its activations (`model.side_checkpoint`):
    # on for ViT-E, whose side sub-modules the reference runs under `checkpoint` (Recognition/ and
    # Retrieval/eva_clip/eva_vit_model.py, AttnCBlock.forward).
    side_checkpoint: bool = False

    @property
    def tower(self) -> Backbone:
        return BACKBONES[self.backbone]

    @property
    def image_size(self) -> int:
        return self.tower.image_size


# Names are unique across tasks: a name always means one model. Retrieval (s.4.1): d = 320 with
# 12 / 12 / 24 / 32 layers on B/32, B/16, L/14, E/14, 12 frames.
PRESETS: dict[str, Preset] = {
    "tiny": Preset("recognition", "tiny", 4, 64),
    "b16-light": Preset("recognition", "b16", 6, 192, paper_tunable_m=4, paper_gflops_per_view=445 / 3),
    "b16": Preset("recognition", "b16", 12, 320, paper_tunable_m=21, paper_gflops_per_view=528 / 3),
    "l14-light": Preset("recognition", "l14", 12, 320, paper_tunable_m=22, paper_gflops_per_view=2092 / 3),
    "l14": Preset("recognition", "l14", 24, 512, paper_tunable_m=102, paper_gflops_per_view=2611 / 3),
    "e14-light": Preset("recognition", "e14", 32, 576, paper_gflops_per_view=7980.0, side_checkpoint=True),
    "tiny-retrieval": Preset("retrieval", "tiny", 4, 64),
    "b32-retrieval": Preset("retrieval", "b32", 12, 320, num_frames=12),
    "b16-retrieval": Preset("retrieval", "b16", 12, 320, num_frames=12),
    "l14-retrieval": Preset("retrieval", "l14", 24, 320, num_frames=12),
    "e14-retrieval": Preset("retrieval", "e14", 32, 320, num_frames=12, side_checkpoint=True),
}


def presets_for(task: Task) -> dict[str, Preset]:
    return {name: p for name, p in PRESETS.items() if p.task == task}


def find_preset(task: Task, backbone: str, largest: bool = False) -> str:
    """The preset of `task` on `backbone` with the smallest (or largest) side network ("ours-light" / "ours")."""
    names = [n for n, p in presets_for(task).items() if p.backbone == backbone]
    if not names:
        raise ValueError(f"no {task} preset on backbone {backbone!r}")
    size = {n: PRESETS[n].side_layers * PRESETS[n].side_dim ** 2 for n in names}
    return (max if largest else min)(names, key=size.__getitem__)
