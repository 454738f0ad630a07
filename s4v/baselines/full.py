"""Full fine-tuning and the frozen-[CLS] mean-pool probe, for recognition and for retrieval (CLIP4Clip meanP)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s4v.baselines.common import VideoHead, build_visual, frozen
from s4v.models.backbone import build_clip


class FullFinetune(nn.Module):
    """Every visual weight trainable; per-frame projected [CLS], mean over frames, linear head."""

    def __init__(self, backbone: str, num_classes: int, num_frames: int = 8, device="cpu") -> None:
        super().__init__()
        self.visual = build_visual(backbone, device)
        with torch.device(device):
            self.head = VideoHead(self.visual.output_dim, num_classes, num_frames)

    def forward(self, video: Tensor) -> Tensor:
        return self.head(self.visual(video.flatten(0, 1).to(self.visual.conv1.weight.dtype)))


class FrozenMeanPool(FullFinetune):
    """CLIP4Clip-style frozen ViT: the tower runs without autograd, only the head trains."""

    def __init__(self, backbone: str, num_classes: int, num_frames: int = 8, device="cpu") -> None:
        super().__init__(backbone, num_classes, num_frames, device)
        frozen(self.visual)

    def forward(self, video: Tensor) -> Tensor:
        with torch.no_grad():
            feats = self.visual(video.flatten(0, 1).to(self.visual.conv1.weight.dtype))
        return self.head(feats)


class CLIP4Clip(nn.Module):
    """CLIP4Clip meanP (Luo et al. 2022): mean of frame embeddings vs. text embedding, symmetric InfoNCE.

    `freeze_visual=True` is the paper's "CLIP4Clip (frozen ViT)": the image tower runs without
    autograd while the text tower (and logit scale) still train, as in Side4Video's retrieval setup.
    """

    def __init__(self, backbone: str = "b32", num_frames: int = 12, freeze_visual: bool = False, device="cpu") -> None:
        super().__init__()
        self.clip = build_clip(backbone, device=device)
        self.num_frames = num_frames
        self.freeze_visual = freeze_visual
        if freeze_visual:
            frozen(self.clip.visual)

    def encode_video(self, video: Tensor) -> Tensor:
        visual = self.clip.visual
        frames = video.flatten(0, 1).to(visual.conv1.weight.dtype)
        if self.freeze_visual:
            with torch.no_grad():
                emb = visual(frames)
        else:
            emb = visual(frames)
        emb = F.normalize(emb, dim=-1).view(-1, self.num_frames, emb.shape[-1]).mean(1)
        return F.normalize(emb, dim=-1)

    def encode_text(self, text: Tensor) -> Tensor:
        """EOT embedding of (B, L) tokens; L may be shorter than CLIP's context (max_words 32) as in CLIP4Clip."""
        c, length = self.clip, text.shape[1]
        x = c.token_embedding(text) + c.positional_embedding[:length]
        x = c.ln_final(c.transformer(x, attn_mask=c.attn_mask[:length, :length]))
        return x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)] @ c.text_projection

    def forward(self, video: Tensor, text: Tensor) -> Tensor:
        """(B, B) video-to-text logits."""
        t = F.normalize(self.encode_text(text), dim=-1)
        return self.clip.logit_scale.exp() * self.encode_video(video) @ t.t()
