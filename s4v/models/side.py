"""The Side4Video spatial-temporal side network (paper s.3.3, with the reference implementation's init).

Tokens are kept channel-last as (B, T, N, d): patch tokens only, no [CLS] in the side network.
Each block first fuses the frozen layer it reads (0.5 * s + 0.5 * Down(LN(Z)), as the reference
implementation scales it; the paper writes a plain sum), then runs temporal conv, [CLS]-shift
attention and an MLP.

The Table 9 ablations are options of this one network (`SideOptions`), so there is a single side
loop: temporal attention instead of the conv (9b), no [CLS] shift (9c), a side [CLS] slot taken from
the frozen [CLS] or learned (9d), "top" instead of "interval" layer reading (9a); layers and width
(9e, 9f) are the network's size. `fusion="eager"` computes the fusion as the reference code does
(`Linear(LayerNorm(Z))`, which also keeps the normalised features for backward), for the memory
tables that compare with the paper's measurements.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack
from torch.utils import checkpoint as activation_checkpoint
from torch.utils._device import DeviceContext

from s4v.core.choices import BlockForm, SideOptions, TemporalImpl
from s4v.kernels import TemporalConvBranch
from s4v.models.backbone import TowerShape
from s4v.models.fusion import DownNorm, NormDown
from s4v.models.side_spec import PAPER_SIDE, SideSpec

PROJ_DEPTH_SCALE = 24**-0.5  # reference init: out-proj and fc2 std d^-0.5 * 24^-0.5


def batchnorm_tokens(bn: nn.BatchNorm3d, s: Tensor) -> Tensor:
    """BatchNorm3d over channels of (B, T, N, d) tokens (statistics over B, T and space).

    Runs on the tokens viewed as (B*T*N, d, 1, 1, 1): same statistics as NCTHW, no strided layout
    (torch 2.14's CPU BatchNorm backward is wrong at batch 1 on the strided view; see kernels/temporal_conv.py).
    """
    b, t, n, d = s.shape
    return bn(s.reshape(b * t * n, d, 1, 1, 1)).view(b, t, n, d)


def shift_cls(cls: Tensor) -> Tensor:
    """(B, T, d) [CLS] tokens -> first half of channels from frame t+1, second half from t-1, zeros past the ends."""
    half = cls.shape[-1] // 2
    out = torch.zeros_like(cls)
    out[:, :-1, :half] = cls[:, 1:, :half]
    out[:, 1:, half:] = cls[:, :-1, half:]
    return out


def interval_layers(vit_layers: int, side_layers: int) -> list[int]:
    """Frozen layer read by each side block: every (L / l)-th layer, ending at the last (Table 9a's 'interval')."""
    if side_layers > vit_layers or vit_layers % side_layers:
        raise ValueError(f"{side_layers} side layers cannot evenly read {vit_layers} frozen layers")
    step = vit_layers // side_layers
    return [step * (k + 1) - 1 for k in range(side_layers)]


def read_layers(vit_layers: int, side_layers: int, choice: str) -> list[int]:
    """Frozen layers the side blocks read: 'interval' (the paper's) or 'top' (the last l layers, Table 9a)."""
    if choice == "top":
        if side_layers > vit_layers:
            raise ValueError(f"{side_layers} side layers cannot read {vit_layers} frozen layers")
        return list(range(vit_layers - side_layers, vit_layers))
    return interval_layers(vit_layers, side_layers)


class TemporalAttention(nn.Module):
    """Self-attention over T at every spatial position (no residual inside): Table 9b's alternative to the conv."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.heads = max(1, dim // 64)
        self.norm = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, s: Tensor) -> Tensor:
        b, t, n, d = s.shape
        x = self.norm(s).transpose(1, 2).reshape(b * n, t, d)
        q, k, v = self.in_proj(x).view(b * n, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, t, d)
        return self.out_proj(out.transpose(1, 2))


class ClsShiftAttention(nn.Module):
    """Spatial self-attention whose queries are patch tokens and keys/values also see the shifted [CLS].

    form "pre" (CLIP towers): LayerNorm on the input; "post" (ViT-E, the reference's eva_vit_model.py
    `AttnCBlock`): no LayerNorm before, LayerNorm on the projected output. The reference's ViT-E code has
    separate q / k / v Linear layers; one packed (3d, d) projection is the same function with the same
    parameter count and PyTorch's default initialisation has the same distribution (fan-in d).
    """

    def __init__(self, dim: int, heads: int, shift: bool = True, form: BlockForm = "pre") -> None:
        super().__init__()
        self.heads = heads
        self.shift = shift  # False: the unshifted [CLS] (Table 9c's ablation)
        self.form = form
        self.norm = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, s: Tensor, cls: Tensor, cls_pos: Tensor | None = None) -> Tensor:
        b, t, n, d = s.shape
        kv_cls = shift_cls(cls) if self.shift else cls
        if cls_pos is not None:
            kv_cls = kv_cls + cls_pos
        x = torch.cat([kv_cls.unsqueeze(2), s], dim=2)
        x = (self.norm(x) if self.form == "pre" else x).reshape(b * t, n + 1, d)
        w_q, w_kv = self.in_proj.weight.split([d, 2 * d])
        b_q, b_kv = self.in_proj.bias.split([d, 2 * d])
        q = F.linear(x[:, 1:], w_q, b_q).view(b * t, n, self.heads, -1).transpose(1, 2)
        k, v = F.linear(x, w_kv, b_kv).view(b * t, n + 1, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = self.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, n, d))
        return self.norm(out) if self.form == "post" else out


class SideBlock(nn.Module):
    """Fusion of one frozen layer, then temporal conv, [CLS]-shift attention and MLP, each residual.

    form "pre" (CLIP towers): s + PW2(DW(PW1(BN(s)))), s + Attn(LN([cls ; s + pos])), s + MLP(BN(s)),
    fusion Down(LN_D(Z)). form "post" (ViT-E, the reference's eva_clip/eva_vit_model.py): s + BN(PW2(DW(PW1(s)))),
    s + LN(Attn([cls ; s + pos])), s + BN(MLP(s)), fusion LN_d(Down(Z)).
    """

    def __init__(
        self,
        dim: int,
        vit_width: int,
        temporal_impl: TemporalImpl = "auto",
        options: SideOptions = PAPER_SIDE,
        form: BlockForm = "pre",
    ) -> None:
        super().__init__()
        self.options, self.form = options, form
        self.fuse = NormDown(vit_width, dim) if form == "pre" else DownNorm(vit_width, dim)
        self.temporal = (
            TemporalConvBranch(dim, impl=temporal_impl, form=form)
            if options.temporal == "conv"
            else TemporalAttention(dim)
        )
        self.attn = ClsShiftAttention(dim, heads=max(1, dim // 64), shift=options.cls_shift, form=form)
        self.mlp_bn = nn.BatchNorm3d(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def fused_features(self, frozen: Tensor) -> Tensor:
        return self.fuse.eager(frozen) if self.options.fusion == "eager" else self.fuse(frozen)

    def merge(self, s: Tensor, z: Tensor) -> Tensor:
        """0.5 * s + 0.5 * z on the patch tokens; the [CLS] slot (if any) fuses the frozen [CLS] or stays learned."""
        representation = self.options.representation
        if representation == "gap":
            return 0.5 * s + 0.5 * z[:, :, 1:]
        if representation == "vit-cls":
            if s.shape[2] < z.shape[2]:  # first block: the side stem has no [CLS], the slot starts from the frozen one
                s = torch.cat([z[:, :, :1], s], dim=2)
            return 0.5 * s + 0.5 * z
        return torch.cat([s[:, :, :1], 0.5 * s[:, :, 1:] + 0.5 * z[:, :, 1:]], dim=2)  # extra-cls: slot not fused

    def forward(self, s: Tensor, frozen: Tensor, pos: Tensor) -> Tensor:
        b, t, _, d = s.shape
        z = self.fused_features(frozen).view(b, t, -1, d)
        s = self.merge(s, z)
        cls_pos = None
        if self.options.cls_pos:
            cls_pos, pos = pos[0], pos[1:]
        if self.options.cls_slot:  # the slot gets no position embedding
            pos = torch.cat([pos.new_zeros(1, d), pos], dim=0)
        s = s + self.temporal(s)
        s = s + self.attn(s + pos, z[:, :, 0], cls_pos)
        if self.form == "post":
            return s + batchnorm_tokens(self.mlp_bn, self.mlp(s))
        return s + self.mlp(batchnorm_tokens(self.mlp_bn, s))


@contextmanager
def _recomputing(block: nn.Module, modes: list[TorchFunctionMode]) -> Iterator[None]:
    """Context of a checkpointed side block's recompute in backward.

    BatchNorm buffers (running statistics, `num_batches_tracked`) are restored after it: the recompute
    normalises exactly as the forward did (batch statistics in training, running ones in eval) but would
    update them a second time, so they end as one step without checkpointing leaves them. The
    torch-function modes active in the forward are re-entered: checkpoint restores autocast and the
    device context for the recompute but not these, and the recompute must run the forward's ops (the
    memory accounting's `GpuRuntime` is one).
    """
    norms = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        kept = [[b.clone() for b in bn.buffers()] for bn in norms]
    with ExitStack() as stack:
        for mode in modes:
            stack.enter_context(mode)
        try:
            yield
        finally:
            with torch.no_grad():
                for bn, buffers in zip(norms, kept, strict=True):
                    for b, k in zip(bn.buffers(), buffers, strict=True):
                        b.copy_(k)


def _checkpoint_contexts(block: nn.Module) -> tuple[AbstractContextManager, AbstractContextManager]:
    """(forward, recompute) contexts for `torch.utils.checkpoint`; called at the block's forward."""
    # checkpoint itself re-creates the device context (re-entering the captured one would corrupt it)
    modes = [m for m in _get_current_function_mode_stack() if not isinstance(m, DeviceContext)]
    return nullcontext(), _recomputing(block, modes)


class SideNetwork(nn.Module):
    """Stem + l side blocks; `forward` drives the frozen tower so only one frozen layer is alive at a time.

    `spec.checkpoint`: each side block is recomputed in backward (non-reentrant `torch.utils.checkpoint`), so
    only its inputs are kept: the side tokens s and the frozen features Z, which the block's fusion keeps
    anyway. Same values and gradients as without it, for one more side forward.
    """

    def __init__(self, tower: TowerShape, spec: SideSpec) -> None:
        """`spec.layers` blocks of width `spec.dim` reading the frozen tower of shape `tower`."""
        super().__init__()
        self.spec = spec
        dim, options = spec.dim, spec.options
        self.read_layers = read_layers(tower.layers, spec.layers, options.layer_choice)
        self.stem = nn.Conv3d(
            3,
            dim,
            kernel_size=(3, tower.patch_size, tower.patch_size),
            stride=(1, tower.patch_size, tower.patch_size),
            padding=(1, 0, 0),
        )
        self.stem_bn = nn.BatchNorm3d(dim)
        self.pos = nn.Parameter(torch.empty(tower.num_patches + options.cls_pos, dim))
        self.blocks = nn.ModuleList(
            SideBlock(dim, tower.width, spec.temporal_impl, options, spec.form) for _ in range(spec.layers)
        )
        self.extra_cls = nn.Parameter(torch.empty(dim)) if options.representation == "extra-cls" else None
        self.reset_parameters()

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def options(self) -> SideOptions:
        return self.spec.options

    @property
    def form(self) -> BlockForm:
        return self.spec.form

    @property
    def checkpoint(self) -> bool:
        return self.spec.checkpoint

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The reference implementation's initialisation of each form.

        Pre-norm (Recognition/clip/model.py): position std 0.01, attention and MLP as below. Post-norm
        (Recognition/eva_clip/eva_vit_model.py): position std 0.02 and PyTorch's defaults elsewhere (its
        `AttnCBlock` init matches parameter names its modules do not have, so it changes nothing).
        """
        d = self.dim
        nn.init.normal_(self.pos, std=0.01 if self.form == "pre" else 0.02)
        if self.extra_cls is not None:
            nn.init.normal_(self.extra_cls, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.form == "post":
            return
        for blk in self.blocks:
            nn.init.normal_(blk.attn.in_proj.weight, std=d**-0.5)
            nn.init.normal_(blk.attn.out_proj.weight, std=d**-0.5 * PROJ_DEPTH_SCALE)
            nn.init.normal_(blk.mlp[0].weight, std=(2 * d) ** -0.5)
            nn.init.normal_(blk.mlp[2].weight, std=d**-0.5 * PROJ_DEPTH_SCALE)
            for lin in (blk.attn.in_proj, blk.attn.out_proj, blk.mlp[0], blk.mlp[2]):
                nn.init.zeros_(lin.bias)

    def stem_tokens(self, video: Tensor) -> Tensor:
        """(B, T, 3, H, W) -> (B, T, N, d)."""
        s = self.stem_bn(self.stem(video.transpose(1, 2)))
        return s.flatten(3).permute(0, 2, 3, 1)

    def forward(self, video: Tensor, backbone: nn.Module) -> tuple[Tensor, Tensor]:
        """Side output (B, T, N, d), or (B, T, 1 + N, d) with a [CLS] slot; the tower's last tokens (B*T, 1 + N, D)."""
        (s,), x = run_side_networks([self], video, backbone)
        return s, x

    def first_tokens(self, video: Tensor) -> Tensor:
        """The side tokens before the first block: the stem's, behind the extra [CLS] slot if there is one."""
        b, t = video.shape[:2]
        s = self.stem_tokens(video.to(self.stem.weight.dtype))
        if self.extra_cls is not None:
            s = torch.cat([self.extra_cls.to(s.dtype).expand(b, t, 1, -1), s], dim=2)
        return s

    def run_block(self, block: SideBlock, s: Tensor, frozen: Tensor) -> Tensor:
        if not self.checkpoint:
            return block(s, frozen, self.pos)
        # Non-reentrant: the only variant that takes a recompute context; it restores the RNG state too.
        return activation_checkpoint.checkpoint(
            block, s, frozen, self.pos, use_reentrant=False, context_fn=partial(_checkpoint_contexts, block)
        )

    def head_tokens(self, s: Tensor) -> Tensor:
        """What the recognition head pools: every patch token (GAP) or the [CLS] slot."""
        return s[:, :, :1] if self.options.cls_slot else s


def run_side_networks(sides: Sequence[SideNetwork], video: Tensor, backbone: nn.Module) -> tuple[list[Tensor], Tensor]:
    """One frozen pass for any number of side networks: the tower steps layer by layer, and each side block
    that reads layer i runs on it before layer i + 1 is computed, so one frozen layer's output is alive at a
    time however many networks read it. Networks share nothing but the frozen features (a sweep's members,
    or the one side network of a model). Returns each network's side output and the tower's last tokens."""
    states = [side.first_tokens(video) for side in sides]
    readers = [dict(zip(side.read_layers, side.blocks, strict=True)) for side in sides]
    x = backbone.embed(video.flatten(0, 1))
    for index in range(len(backbone.blocks)):
        x = backbone.block(index, x)
        for k, (side, blocks) in enumerate(zip(sides, readers, strict=True)):
            if index in blocks:
                states[k] = side.run_block(blocks[index], states[k], x)
    return states, x
