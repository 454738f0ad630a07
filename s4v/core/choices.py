"""The model enumerations, defined once: the config loader checks run configs against them and the
model code takes its choices from them (`typing.get_args`), so the two cannot disagree.

Plain `typing` only (no torch): the config loader imports this before anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Task = Literal["recognition", "retrieval"]
BlockForm = Literal["pre", "post"]  # side-block normalisation: CLIP towers pre-norm, ViT-E post-norm
ModelKind = Literal["side4video", "meanpool"]  # meanpool: order-invariant frozen-[CLS] probe / CLIP4Clip frozen
# retrieval: weighted token-wise (the reference's --interaction wti) | token-wise (DRL / FILIP) | mean-pooled global
Matching = Literal["wti", "token", "global"]
AttnBackend = Literal["sdpa", "math", "flash_attn", "xformers"]
TemporalImpl = Literal["auto", "triton", "reference"]  # auto: Triton kernels on CUDA tensors, PyTorch elsewhere
# torch.compile of each frozen block: none (eager) or a torch.compile mode (reduce-overhead: CUDA graphs on CUDA)
CompileFrozen = Literal["none", "default", "reduce-overhead", "max-autotune"]


@dataclass(frozen=True)
class SideOptions:
    """Variants of the side network; the defaults are the paper's model."""

    temporal: Literal["conv", "attention"] = "conv"
    cls_shift: bool = True
    representation: Literal["gap", "vit-cls", "extra-cls"] = "gap"
    layer_choice: Literal["interval", "top"] = "interval"
    fusion: Literal["normdown", "eager"] = "normdown"
    # A position row for the shifted [CLS] too (N + 1 rows): the retrieval side network of the
    # reference (Retrieval/modules/module_clip.py, SideTransformer and AttnCBlock.forward).
    cls_pos: bool = False

    def __post_init__(self) -> None:
        choices = {
            "temporal": ("conv", "attention"),
            "representation": ("gap", "vit-cls", "extra-cls"),
            "layer_choice": ("interval", "top"),
            "fusion": ("normdown", "eager"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"side option {name}={getattr(self, name)!r}: choose one of {allowed}")

    @property
    def cls_slot(self) -> bool:
        """The side tokens carry a [CLS] slot in front of the patches, and the head reads it."""
        return self.representation != "gap"
