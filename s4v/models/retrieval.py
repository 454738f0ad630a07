"""Side4Video for text-video retrieval (paper eq. 4, s.3.4, as the reference computes it).

Frame embedding = Proj(LN_post(Z_out[CLS] + Up(mean over patches of BN3d(side output)))), following the
reference's Retrieval/modules/module_clip.py (`VisualTransformer.forward`): a BatchNorm3d on the side
output, a bias-free `Up` that starts at zero (training starts from CLIP's zero-shot frame embeddings),
and the sum taken before the tower's final LayerNorm. Trained besides the new modules: the CLIP text tower
and the tower's final norm and projection (Retrieval/main_task_retrieval.py: `--freeze_vit_encoder`
freezes every `visual.*` parameter, then its `freeze_layer_num` loop turns `visual.ln_post` / `visual.proj`
(EVA: `visual.norm` / `visual.head`) back on as "top layers [that] always need to train"). The `meanpool`
kind is CLIP4Clip with a frozen ViT: no side network, the frames' projected [CLS] matched the same way.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s4v.core.choices import Matching
from s4v.models.backbone import FrozenBackbone
from s4v.models.matching import Matcher
from s4v.models.side import SideNetwork, batchnorm_tokens
from s4v.models.side_spec import SideSpec
from s4v.models.text import TextEncoder

# Pretrained CLIP parts: lr 1e-7 in the recipe (the reference's coef_lr 1e-3 of lr 1e-4).
CLIP_MODULE_PREFIXES = ("text.", "visual_head.", "temperature.")
MAX_LOGIT_SCALE = math.log(100)  # the reference clamps CLIP's logit scale to <= ln 100 after each step
INITIALIZER_RANGE = 0.02  # CLIP4Clip's re-initialisation of new Linear modules (until_module.py)

FeatureGather = Callable[[Tensor], Tensor]


class Temperature(nn.Module):
    """CLIP's learned logit scale, as a module so every trainable tensor sits in a child module.

    No clamp in forward (a clamp there zeroes the gradient at CLIP's pretrained value, ln 100): the
    training task clamps the parameter after each optimizer step, as the reference does.
    """

    def __init__(self, logit_scale: Tensor) -> None:
        super().__init__()
        # shape (1,), not a scalar: DeepSpeed's broadcast views parameters as bytes, which 0-dim tensors refuse
        self.logit_scale = nn.Parameter(logit_scale.detach().clone().reshape(1))

    def forward(self, sim: Tensor) -> Tensor:
        return self.logit_scale.exp() * sim


class VisualHead(nn.Module):
    """The tower's final norm and projection, copied out of it (trained, at the CLIP learning rate): eq. 4
    applies them to Z_cls + Up(...)."""

    def __init__(self, backbone: FrozenBackbone) -> None:
        super().__init__()
        norm, weight, bias = backbone.final_layers()
        self.norm = copy.deepcopy(norm).float()
        self.proj = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            self.proj.weight.copy_(weight)
            if bias is not None:
                self.proj.bias.copy_(bias)
        self.requires_grad_(True)  # the copied norm comes out of the frozen tower with requires_grad off

    def forward(self, cls: Tensor) -> Tensor:
        return self.proj(self.norm(cls.to(self.proj.weight.dtype)))


class VideoTextRetrieval(nn.Module):
    """Frozen image tower, optional side network, trainable text tower, a matcher (WTI by default).

    `spec`: the side network (the reference's: `side_spec.RETRIEVAL_SIDE` options); None: CLIP4Clip's frozen tower.
    """

    def __init__(
        self, clip: nn.Module, backbone: FrozenBackbone, spec: SideSpec | None, matching: Matching = "wti"
    ) -> None:
        super().__init__()
        self.backbone = backbone
        shape = backbone.shape
        self.visual_head = VisualHead(backbone)
        self.side = None
        if spec is not None:
            self.side = SideNetwork(shape, spec)
            self.side_bn = nn.BatchNorm3d(spec.dim)
            self.up = nn.Linear(spec.dim, shape.width, bias=False)
        self.text = TextEncoder(clip)
        self.temperature = Temperature(clip.logit_scale)
        self.matcher = Matcher(matching, shape.embed_dim)
        # Set by the trainer when data-parallel ranks contrast against the global batch; identity here.
        self.feature_gather: FeatureGather | None = None
        self.reset_new_modules()

    @torch.no_grad()
    def reset_new_modules(self) -> None:
        """CLIP4Clip's initialisation of what CLIP does not have (Retrieval/modules/modeling.py applies
        until_module.py's `init_weights` to every nn.Linear: N(0, 0.02), zero bias; module_clip.py's
        `AttnCBlock` sets the convolutions and the attention's packed input projection)."""
        for m in self.matcher.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=INITIALIZER_RANGE)
                nn.init.zeros_(m.bias)
        if self.side is None:
            return
        nn.init.zeros_(self.up.weight)
        d = self.side.dim
        for blk in self.side.blocks:
            for lin in (blk.fuse.down, blk.attn.out_proj, blk.mlp[0], blk.mlp[2]):
                nn.init.normal_(lin.weight, std=INITIALIZER_RANGE)
                nn.init.zeros_(lin.bias)
            nn.init.normal_(blk.attn.in_proj.weight, std=d**-0.5)  # nn.MultiheadAttention's in_proj_weight
            nn.init.zeros_(blk.attn.in_proj.bias)
            nn.init.normal_(blk.temporal.pw1.weight, std=INITIALIZER_RANGE)
            nn.init.normal_(blk.temporal.pw2.weight, std=INITIALIZER_RANGE)
            nn.init.normal_(blk.temporal.dw.weight, std=d**-0.5)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def frozen_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def parameter_groups(self, clip_lr: float, new_lr: float) -> list[dict]:
        """Separate learning rates: pretrained CLIP modules vs new modules (recipe: 1e-7 and 1e-4)."""
        clip, new = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (clip if name.startswith(CLIP_MODULE_PREFIXES) else new).append(p)
        groups = [{"params": clip, "lr": clip_lr}, {"params": new, "lr": new_lr}]
        return [g for g in groups if g["params"]]  # CLIP4Clip-frozen has no new module

    def encode_video(self, video: Tensor) -> Tensor:
        """(B, T, 3, H, W) -> frame embeddings (B, T, E), not normalised (the matcher normalises)."""
        b, t = video.shape[:2]
        if self.side is None:
            cls = self.backbone.last_tokens(video.flatten(0, 1))[:, 0]
        else:
            s, x = self.side(video, self.backbone)
            pooled = batchnorm_tokens(self.side_bn, s).mean(2)  # (B, T, d): mean over patches
            cls = x[:, 0].to(self.up.weight.dtype) + self.up(pooled).flatten(0, 1)
        return self.visual_head(cls).view(b, t, -1)

    def encode_text(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Token features (B, L, E), not normalised; validity mask; EOT index."""
        return self.text(tokens)

    def similarity(self, text: Tensor, mask: Tensor, eot: Tensor, frames: Tensor) -> Tensor:
        return self.matcher(text, mask, eot, frames)

    def forward(self, video: Tensor, tokens: Tensor) -> Tensor:
        """Scaled (text, video) similarity logits; with `feature_gather`, against every rank's batch."""
        frames = self.encode_video(video)
        text, mask, eot = self.encode_text(tokens)
        if self.feature_gather is not None:
            text, mask, eot, frames = (self.feature_gather(t) for t in (text, mask, eot, frames))
        return self.temperature(self.similarity(text, mask, eot, frames.to(text.dtype)))


def symmetric_info_nce(logits: Tensor) -> Tensor:
    """InfoNCE in both directions over a batch whose i-th text matches the i-th video."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
