"""Per-token CLIP text features (for token-wise matching), from either open_clip text-tower layout."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TextEncoder(nn.Module):
    """The trainable CLIP text tower, returning projected token features and their validity mask.

    open_clip keeps the text tower either flat on `CLIP` (OpenAI layout) or as `CustomTextCLIP.text`;
    both end in ln_final and a projection, applied here to every token instead of only the EOT token.
    """

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        text = clip.text if hasattr(clip, "text") else clip
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.transformer = text.transformer
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.register_buffer("attn_mask", text.attn_mask, persistent=False)

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Tokenizer ids (B, L) -> token features (B, L, E), validity mask (B, L), EOT position (B,)."""
        n = tokens.shape[1]  # the recipe's 32-token captions use the first 32 positions of CLIP's 77
        if n > self.context_length:
            raise ValueError(f"{n} text tokens exceed the text tower's context length {self.context_length}")
        x = self.token_embedding(tokens) + self.positional_embedding[:n]
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask[:n, :n]))
        proj = self.text_projection
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        eot = tokens.argmax(dim=-1)  # the CLIP tokenizer's EOT id is its largest id
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return x, positions[None, :] <= eot[:, None], eot
