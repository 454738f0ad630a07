"""The model enumerations, defined once: the config loader checks run configs against them and the
model code takes its choices from them (`typing.get_args`), so the two cannot disagree.

Plain `typing` only (no torch): the config loader imports this before anything heavy.
"""

from __future__ import annotations

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
