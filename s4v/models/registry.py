"""Registers s4v's tiny test towers with open_clip (model configs) and timm (the tiny EVA trunk).

Tests and the CPU demo build these through the same factories as the real towers, so no code path
is special-cased for them.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
from timm.models import register_model
from timm.models.eva import Eva, _create_eva

CONFIG_DIR = Path(__file__).parent / "configs"


@register_model
def s4v_eva_tiny_patch8_64(pretrained: bool = False, **kwargs) -> Eva:
    """The ViT-E/14 tower's block design (post-norm, plain GELU MLP, absolute pos-embed) at test size."""
    args = dict(img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=2, mlp_ratio=4.0, use_post_norm=True)
    return _create_eva("s4v_eva_tiny_patch8_64", pretrained=pretrained, **dict(args, **kwargs))


open_clip.add_model_config(CONFIG_DIR)
