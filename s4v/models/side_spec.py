"""`SideSpec`: the side network's hyper-parameters as one value, from the config (or a preset) to `SideNetwork`.

Plain data, no torch. `from_model_config` makes it of a run's config (`s4v.train.build`), `of_preset` of a
preset with overrides (the factories' default, the memory workloads); `SideNetwork`, `Side4VideoClassifier`
and `VideoTextRetrieval` build from it. The frozen tower the side network reads is
not part of it (that is the model's `TowerShape`), nor is the recognition head's dropout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from s4v.core.choices import BlockForm, SideOptions, Task, TemporalImpl
from s4v.models.architectures import PRESETS

if TYPE_CHECKING:
    from s4v.config import ModelConfig

PAPER_SIDE = SideOptions()
RETRIEVAL_SIDE = SideOptions(cls_pos=True)  # module_clip.py: N + 1 position rows, the shifted [CLS] has one


def task_side_options(task: Task) -> SideOptions:
    """The side network variant of a task: the paper's for recognition, the reference's own for retrieval."""
    return RETRIEVAL_SIDE if task == "retrieval" else PAPER_SIDE


@dataclass(frozen=True)
class SideSpec:
    """l side blocks of width d, their Table 9 variant, block form, checkpointing and temporal kernels."""

    dim: int  # width d (a multiple of 64: 64-dim heads)
    layers: int  # side blocks l (a divisor of the tower's layers)
    options: SideOptions = PAPER_SIDE  # Table 9 variants
    form: BlockForm = "pre"  # normalisation of the side blocks: pre (CLIP towers) or post (ViT-E)
    checkpoint: bool = False  # each side block recomputed in backward (`model.side_checkpoint`)
    temporal_impl: TemporalImpl = "auto"  # kernels of the temporal conv branch

    @classmethod
    def of_preset(
        cls,
        preset: str,
        *,
        dim: int | None = None,
        layers: int | None = None,
        options: SideOptions | None = None,
        checkpoint: bool | None = None,
        temporal_impl: TemporalImpl = "auto",
    ) -> SideSpec:
        """The side network of preset `preset`, with what is given (not None) in place of the preset's.

        The block form is always the preset tower's; `options` defaults to the preset task's variant.
        """
        p = PRESETS[preset]
        return cls(
            dim=dim or p.side_dim,
            layers=layers or p.side_layers,
            options=task_side_options(p.task) if options is None else options,
            form=p.tower.block_form,
            checkpoint=p.side_checkpoint if checkpoint is None else checkpoint,
            temporal_impl=temporal_impl,
        )

    @classmethod
    def from_model_config(cls, model: ModelConfig) -> SideSpec | None:
        """The side network of a run's `model` section; None for a model kind without one.

        `model.side` (Table 9) is recognition's: the config checks refuse it for retrieval, whose side
        network is the reference's own variant.
        """
        if model.kind != "side4video":
            return None
        return cls.of_preset(
            model.preset,
            dim=model.side_dim,
            layers=model.side_layers,
            options=model.side if model.task == "recognition" else None,
            checkpoint=model.side_checkpoint,
            temporal_impl=model.temporal_impl,
        )
