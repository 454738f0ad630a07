"""Loading official CLIP / EVA-CLIP weights from local files, in the formats users actually have.

- OpenAI CLIP `.pt` (TorchScript archive or plain state dict): OpenAI's key layout is open_clip's
  CLIP layout; only its metadata entries are dropped. Tensors are copied as stored (open_clip's
  OpenAI builder would round fp32 files to fp16).
- open_clip state dicts (`.pt` / `.bin` / `.pth`, optionally under "state_dict", "module." prefixes).
- EVA-CLIP files in BAAI's native layout (`visual.blocks.0.attn.q_proj...`): converted by timm's
  EVA checkpoint filter.
- `.safetensors` of any of the above.
Nothing is downloaded: a missing file is an error naming the path.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from timm.models.eva import checkpoint_filter_fn as eva_filter
from torch import Tensor, nn

from s4v.errors import UserError


# Both keep their former base class as well, so callers that catch RuntimeError / FileNotFoundError still do.
class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that does not fit the model it is loaded into."""


class WeightsNotFoundError(UserError, FileNotFoundError):
    """The weights file named by the config does not exist."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a checkpoint file, unwrapped from TorchScript / trainer containers."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint not found: {path} (weights are never downloaded; pass a local file)")
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


# OpenAI metadata, and the causal text mask that TorchScript archives store: derived, not weights.
DERIVED_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def _is_eva_native(state: dict[str, Tensor]) -> bool:
    return "visual.pos_embed" in state or any(k.startswith("visual.blocks.") for k in state)


def _copy_strict(model: nn.Module, state: dict[str, Tensor], source: Path) -> None:
    """Copy tensors into `model`, refusing missing/unexpected keys and shape mismatches with their names."""
    own = model.state_dict()
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
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
    state = {k: v for k, v in state.items() if k not in DERIVED_KEYS}
    if _is_eva_native(state):
        visual = eva_filter(state, model.visual.trunk)
        state = {f"visual.trunk.{k}": v for k, v in visual.items()} | {
            k: v for k, v in state.items() if not k.startswith("visual.")
        }
    _copy_strict(model, state, path)
