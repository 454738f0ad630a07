"""Loading official CLIP / EVA-CLIP weights from local files, in the formats users actually have.

- OpenAI CLIP `.pt` (TorchScript archive or plain state dict): rebuilt by open_clip's own OpenAI
  loader, then copied into our model so the architecture is checked against the preset.
- open_clip state dicts (`.pt` / `.bin` / `.pth`, optionally under "state_dict", "module." prefixes).
- EVA-CLIP files in BAAI's native layout (`visual.blocks.0.attn.q_proj...`): converted by timm's
  EVA checkpoint filter.
- `.safetensors` of any of the above.
Nothing is downloaded: a missing file is an error naming the path.
"""

from __future__ import annotations

from pathlib import Path

import torch
from open_clip.model import build_model_from_openai_state_dict
from safetensors.torch import load_file
from timm.models.eva import checkpoint_filter_fn as eva_filter
from torch import Tensor, nn


class CheckpointError(RuntimeError):
    """A checkpoint file that does not fit the model it is loaded into."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a checkpoint file, unwrapped from TorchScript / trainer containers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (weights are never downloaded; pass a local file)")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        try:
            state = torch.jit.load(str(path), map_location="cpu").state_dict()  # OpenAI's TorchScript archives
        except RuntimeError:
            state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    return {k.removeprefix("module."): v for k, v in state.items()}


def _is_openai(state: dict[str, Tensor]) -> bool:
    return "visual.proj" in state and "text_projection" in state and "visual.class_embedding" in state


def _is_eva_native(state: dict[str, Tensor]) -> bool:
    return "visual.pos_embed" in state or any(k.startswith("visual.blocks.") for k in state)


def _copy_strict(model: nn.Module, state: dict[str, Tensor], source: Path) -> None:
    """Copy tensors into `model`, refusing missing/unexpected keys and shape mismatches with their names."""
    own = model.state_dict()
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if mismatched or missing or unexpected:
        lines = [f"checkpoint {source} does not match the model:"]
        lines += [f"  shape mismatch {m}" for m in mismatched[:10]]
        lines += [f"  missing {k}" for k in missing[:10]] + [f"  unexpected {k}" for k in unexpected[:10]]
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)


def load_clip_weights(model: nn.Module, path: str | Path) -> None:
    """Load a CLIP / EVA-CLIP checkpoint of any supported format into an open_clip model."""
    path = Path(path)
    state = read_state_dict(path)
    if _is_openai(state):
        # open_clip's OpenAI loader infers the architecture from the tensors; the strict copy below
        # then checks that it is the one this preset expects.
        reference = build_model_from_openai_state_dict(state, quick_gelu=True, cast_dtype=None)
        state = reference.state_dict()
    elif _is_eva_native(state):
        visual = eva_filter(state, model.visual.trunk)
        state = {f"visual.trunk.{k}": v for k, v in visual.items()} | {
            k: v for k, v in state.items() if not k.startswith("visual.")
        }
    _copy_strict(model, state, path)
