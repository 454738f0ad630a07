"""Frozen image tower: open_clip CLIP ViTs and EVA-CLIP (timm `Eva` inside open_clip), stepped layer by layer.

The side network interleaves with the frozen layers (run layer k, feed side block k, drop layer k),
so the tower exposes `embed` / `block` / `pool` instead of a monolithic forward; at no point are all
L layer outputs alive at once. Everything here runs under `torch.no_grad`, not `inference_mode`:
inference tensors cannot be saved for backward, and the side network's Down projection must save
its frozen input to compute its weight gradient.

`compile_frozen` runs each frozen block through `torch.compile` ("regional" compilation): the blocks of a
tower are identical modules, so Dynamo traces one block and reuses the graph for all of them (parameters
are graph inputs), and compile time does not grow with depth (ViT-E/14's 64 blocks cost one trace).
"reduce-overhead" adds CUDA graphs on CUDA. They pay exactly where the frozen tower sits: static shapes
(fixed frames, crop and micro batch), no autograd graph (no_grad blocks, so no backward graph to
capture) and no data-dependent control flow; they remove the per-kernel launch cost that dominates
small batches and narrow towers. Each tower forward starts a new CUDA-graph generation
(`embed`): its replays overwrite the previous forward's block outputs, which that step's backward has
consumed by then; so, under "reduce-overhead", a model must not run two forwards before one backward.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import get_args

import open_clip
import torch
from open_clip.timm_model import TimmModel
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, Shard

from s4v.core.choices import CompileFrozen
from s4v.models import registry  # noqa: F401  (registers the tiny towers)
from s4v.models.architectures import BACKBONES
from s4v.models.attention import check_backend, route_attention, sdpa_context
from s4v.models.checkpoint import ClipWeights, load_clip_weights
from s4v.models.deferred import InitRecorder, Unreplayable


@dataclass(frozen=True)
class TowerShape:
    """What the side network needs to know about the frozen tower."""

    width: int
    layers: int
    patch_size: int
    image_size: int
    embed_dim: int

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class _RandomInitNotice(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded" warning: s4v always builds without `pretrained`
    (nothing is downloaded) and loads local weights itself, so the warning would fire on every build."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


PARTS = ("visual", "text")


def part_of(name: str) -> str:
    """ "visual" for the image tower's tensors, "text" for the rest (text tower, logit scale)."""
    return "visual" if name.startswith("visual.") else "text"


def tower_blocks(visual: nn.Module) -> nn.ModuleList:
    """The residual blocks of an open_clip visual tower (EVA: the timm trunk's)."""
    return visual.trunk.blocks if isinstance(visual, TimmModel) else visual.transformer.resblocks


def _tensors(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """Every parameter and buffer, non-persistent buffers included (a text tower's causal mask)."""
    yield from model.named_parameters()
    yield from model.named_buffers()


def build_clip(
    backbone: str,
    checkpoint: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    parts: tuple[str, ...] = PARTS,
    shard: Callable[[nn.Module], None] | None = None,
) -> open_clip.model.CLIP | open_clip.model.CustomTextCLIP:
    """open_clip model of `backbone` (a key of the architecture table): random init, or weights from a local file.

    The model is built on the meta device and only the tensors of `parts` ("visual" and/or "text") are made
    real on `device`, the visual tower's floating tensors directly in `dtype` (None: fp32; the text tower,
    trained in retrieval, stays fp32), and filled one tensor at a time: from the memory-mapped checkpoint, or
    by replaying their recorded random init (bit-identical to an eager fp32 build cast to `dtype`, with the
    random generator left where an eager build leaves it). Tensors of other parts stay on the meta device (no
    memory). `shard` is applied to the meta model first (`s4v.models.sharding`): a sharded parameter receives
    only this rank's slice of each tensor, read from the file or cut from the replayed tensor, so no rank ever
    holds the whole tower. On the meta device nothing is allocated (counting, planning, tables).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    if unknown := set(parts) - set(PARTS):
        raise ValueError(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    device = torch.device(device)
    if device.type == "meta":
        return _create(backbone, device)
    recorder = InitRecorder(device)
    try:
        with recorder:
            model = _create(backbone, torch.device("meta"))
        recipes = {name: recorder.recipe(t) for name, t in _tensors(model) if part_of(name) in parts}
    except Unreplayable:  # an init the recorder cannot split up: build eagerly in fp32, as before
        logging.getLogger(__name__).warning("building %s eagerly in fp32: its init cannot be replayed", backbone)
        model = _create(backbone, device)
        if checkpoint is not None:
            load_clip_weights(model, checkpoint)
        if dtype is not None:
            model.visual.to(dtype)
        if shard is not None:
            shard(model)
        return model
    after = recorder.generator.get_state()
    if dtype is not None:
        model.visual.to(dtype)  # on the meta device: only the recorded dtype of each tensor changes
    if shard is not None:
        shard(model)
    weights = ClipWeights(checkpoint, model) if checkpoint is not None else None
    if weights is not None:
        weights.check(model)  # every key, loaded part or not
    for name, child in model.named_children():
        if part_of(f"{name}.") in parts:
            child.to_empty(device=device)
    if "text" in parts:
        model.to_empty(device=device, recurse=False)  # the text tower's top-level tensors (CLIP layout)
    try:
        with torch.no_grad():
            for name, target in _tensors(model):
                if part_of(name) not in parts:
                    continue
                source = weights[name] if weights is not None and name in weights else recipes[name].replay()
                _fill(target, source)
                if weights is not None:
                    weights.release(source)
    finally:
        recorder.generator.set_state(after)
    return model


def _fill(target: Tensor, source: Tensor) -> None:
    """Copy `source` (the whole tensor) into `target`, or into this rank's slice of it when `target` is sharded."""
    if isinstance(target, DTensor):  # FSDP2: dim-0 chunks as torch.chunk cuts them, trailing ranks maybe empty
        if target.placements != (Shard(0),):
            raise ValueError(f"unsupported placements {target.placements}")
        rank, chunks = target.device_mesh.get_local_rank(), torch.chunk(source, target.device_mesh.size(), dim=0)
        source = chunks[rank] if rank < len(chunks) else source[:0]
        target = target.to_local()
    if target.shape != source.shape:
        raise ValueError(f"cannot fill a tensor of shape {tuple(target.shape)} from {tuple(source.shape)}")
    target.copy_(source)


def _create(backbone: str, device: torch.device) -> open_clip.model.CLIP | open_clip.model.CustomTextCLIP:
    root, notice = logging.getLogger(), _RandomInitNotice()  # open_clip logs through the root logger
    root.addFilter(notice)
    try:
        with torch.device(device):
            return open_clip.create_model(BACKBONES[backbone].open_clip, pretrained=None, device=device)
    finally:
        root.removeFilter(notice)


COMPILE_MODES: tuple[CompileFrozen, ...] = get_args(CompileFrozen)


def run_block(block: nn.Module, x: Tensor, attn_backend: str) -> Tensor:
    """One frozen block under its attention backend's SDPA context.

    The context is entered inside this function so that, compiled, it is traced into the graph and the
    backend (a constant Dynamo guards on) picks the kernel; a context around a compiled call is not guarded.
    """
    with sdpa_context(attn_backend):
        return block(x)


def compiled_block_runner(mode: CompileFrozen) -> Callable[[nn.Module, Tensor, str], Tensor]:
    """`run_block`, or `torch.compile` of it in `mode`.

    The block is an argument, not part of the compiled object: every block of a tower hits one graph.
    dynamic=False: a run feeds the tower one shape (a new batch size, e.g. a last partial batch,
    recompiles once), and static shapes are what CUDA graphs need.
    """
    if mode == "none":
        return run_block
    return torch.compile(run_block, mode=None if mode == "default" else mode, dynamic=False)


class FrozenBackbone(nn.Module):
    """A frozen visual tower with no trainable parameter and no autograd history."""

    def __init__(
        self,
        visual: nn.Module,
        attn_backend: str = "sdpa",
        dtype: torch.dtype | None = None,
        compile_frozen: CompileFrozen = "none",
    ) -> None:
        super().__init__()
        if compile_frozen not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {compile_frozen!r}; choose one of {COMPILE_MODES}")
        if not isinstance(visual, VisionTransformer | TimmModel):
            raise TypeError(f"unsupported visual tower {type(visual).__name__}")
        self.visual = visual
        self.is_eva = isinstance(visual, TimmModel)
        if self.is_eva and getattr(visual.trunk, "rope", None) is not None:
            raise NotImplementedError("EVA towers with rotary embeddings are not supported (ViT-E/14 has none)")
        device = next(visual.parameters()).device
        if device.type != "meta":
            check_backend(attn_backend, device)
        self.attn_backend = attn_backend
        if not self.is_eva:
            route_attention(visual, attn_backend)
        if dtype is not None:
            visual.to(dtype)
        self.requires_grad_(False)
        self.eval()
        self.compile_frozen = compile_frozen
        self._run_block = compiled_block_runner(compile_frozen)

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Always eval: the tower's dropout / patch-dropout must never switch on."""
        return super().train(False)

    @property
    def shape(self) -> TowerShape:
        v = self.visual
        if self.is_eva:
            t = v.trunk
            return TowerShape(
                t.embed_dim,
                len(t.blocks),
                t.patch_embed.patch_size[0],
                t.patch_embed.img_size[0],
                v.trunk.num_classes or t.embed_dim,
            )
        return TowerShape(v.transformer.width, v.transformer.layers, v.patch_size[0], v.image_size[0], v.output_dim)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.visual.parameters()).dtype

    @property
    def blocks(self) -> nn.ModuleList:
        return tower_blocks(self.visual)

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> tokens (B, 1 + N, D) entering the first block ([CLS] first)."""
        if self.compile_frozen == "reduce-overhead":
            # A new tower forward: CUDA-graph replays may now reuse the previous forward's output buffers.
            torch.compiler.cudagraph_mark_step_begin()
        images = images.to(self.dtype)
        if self.is_eva:
            trunk = self.visual.trunk
            x, _ = trunk._pos_embed(trunk.patch_embed(images))
            return trunk.norm_pre(x)
        return self.visual._embeds(images)

    @torch.no_grad()
    def block(self, index: int, x: Tensor) -> Tensor:
        """Run frozen block `index`; its output is Z^index of the paper (after the residual block)."""
        return self._run_block(self.blocks[index], x, self.attn_backend)

    @torch.no_grad()
    def pool(self, x: Tensor, project: bool = True) -> Tensor:
        """Final [CLS] embedding from the last block's tokens; equals open_clip `encode_image` if projected."""
        v = self.visual
        if self.is_eva:
            # EVA-CLIP's projection is the timm trunk's head (open_clip config `timm_proj: null`).
            return v.head(v.trunk.forward_head(v.trunk.norm(x), pre_logits=not project))
        pooled, _ = v._pool(x)
        return pooled @ v.proj if project and v.proj is not None else pooled

    @torch.no_grad()
    def layer_outputs(self, images: Tensor) -> Iterator[Tensor]:
        """Yield every layer's tokens (B, 1 + N, D) in order; only the current one is kept alive."""
        x = self.embed(images)
        for index in range(len(self.blocks)):
            x = self.block(index, x)
            yield x

    @torch.no_grad()
    def last_tokens(self, images: Tensor) -> Tensor:
        """The last block's tokens (B, 1 + N, D), before the tower's final norm."""
        return deque(self.layer_outputs(images), maxlen=1)[0]  # keeps one layer alive, not all

    @torch.no_grad()
    def forward(self, images: Tensor, project: bool = True) -> Tensor:
        """Final [CLS] embedding of each image (projected: open_clip's `encode_image`)."""
        return self.pool(self.last_tokens(images), project)

    def final_layers(self) -> tuple[nn.LayerNorm, Tensor, Tensor | None]:
        """The final norm applied to the [CLS] token and the projection (weight (E, D), bias) after it."""
        v = self.visual
        if self.is_eva:
            trunk = v.trunk
            if not isinstance(trunk.fc_norm, nn.Identity) or trunk.global_pool != "token":
                raise NotImplementedError("EVA towers are supported with token pooling and no fc_norm")
            return trunk.norm, trunk.head.weight, trunk.head.bias
        return v.ln_post, v.proj.t(), None
