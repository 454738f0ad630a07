"""Loading official CLIP / EVA-CLIP weights from local files, in the formats users actually have.

- OpenAI CLIP `.pt` (TorchScript archive or plain state dict): OpenAI's key layout is open_clip's
  CLIP layout; only its metadata entries are dropped. Tensors are copied as stored (open_clip's
  OpenAI builder would round fp32 files to fp16).
- open_clip state dicts (`.pt` / `.bin` / `.pth`, optionally under "state_dict", "module." prefixes).
- EVA-CLIP files in BAAI's native layout (`visual.blocks.0.attn.q_proj...`): renamed by timm's
  EVA checkpoint filter.
- `.safetensors` of any of the above.

Files are memory-mapped where the format allows (torch zip checkpoints, safetensors): `ClipWeights` reads a
tensor's bytes when it is looked up, and `release` hands its pages back after it was copied, so a model built
on the meta device is filled tensor by tensor without the file ever being in memory whole (a 9.4 GB ViT-E
file would otherwise sit beside the model). OpenAI's TorchScript archives cannot be mapped: they are read
whole (their size, transiently). Nothing is downloaded: a missing file is an error naming the path.
"""

from __future__ import annotations

import ctypes
import mmap
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from timm.models.eva import checkpoint_filter_fn as eva_filter
from torch import Tensor, nn

from s4v.core.errors import UserError


# Both keep their former base class as well, so callers that catch RuntimeError / FileNotFoundError still do.
class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that does not fit the model it is loaded into."""


class WeightsNotFoundError(UserError, FileNotFoundError):
    """The weights file named by the config does not exist."""


# OpenAI metadata, and the causal text mask that TorchScript archives store: derived, not weights.
DERIVED_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _unwrap(state: dict) -> dict[str, Tensor]:
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    return {k.removeprefix("module."): v for k, v in state.items() if k not in DERIVED_KEYS}


def _open(path: Path) -> tuple[Callable[[str], Tensor], dict[str, torch.Size], bool]:
    """(read one tensor by file key, every key's shape, whether tensors are file-mapped) of a checkpoint."""
    if path.suffix == ".safetensors":
        file = safe_open(str(path), framework="pt", device="cpu")
        shapes = {k: torch.Size(file.get_slice(k).get_shape()) for k in file.keys() if k not in DERIVED_KEYS}
        return file.get_tensor, shapes, True
    if _is_torchscript(path):
        state = _unwrap(torch.jit.load(str(path), map_location="cpu").state_dict())  # OpenAI's archives
        mapped = False
    else:
        mapped = zipfile.is_zipfile(path)  # the legacy (pre-1.6) format cannot be mapped
        state = _unwrap(torch.load(path, map_location="cpu", weights_only=True, mmap=mapped))
    return state.__getitem__, {k: v.shape for k, v in state.items()}, mapped


def _eva_names(shapes: dict[str, torch.Size], model: nn.Module) -> dict[str, str]:
    """open_clip name -> file key of a BAAI-layout file, from timm's filter run on shape-only stand-ins.

    The filter only renames at the checkpoints' own resolution; a tensor it would have to convert
    (patch or position embeddings resampled to another size) is refused, naming it.
    """
    stand_ins = {k: torch.empty(s, device="meta") for k, s in shapes.items() if k.startswith("visual.")}
    key_of = {id(t): k for k, t in stand_ins.items()}
    renamed = eva_filter(stand_ins, model.visual.trunk)
    converted = [k for k, t in renamed.items() if id(t) not in key_of]
    if converted:
        raise CheckpointError(f"EVA checkpoint tensors need resampling to this tower's size: {', '.join(converted)}")
    names = {f"visual.trunk.{k}": key_of[id(t)] for k, t in renamed.items()}
    return names | {k: k for k in shapes if not k.startswith("visual.")}


class ClipWeights(Mapping):
    """A checkpoint file as open_clip-named tensors, each read from the file when looked up.

    Key layouts are resolved against `model` (BAAI's native EVA layout is renamed); `check` compares names and
    shapes with the model without reading any tensor.
    """

    def __init__(self, path: str | Path, model: nn.Module) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise WeightsNotFoundError(
                f"checkpoint not found: {self.path} (weights are never downloaded; pass a local file)"
            )
        self._read, shapes, self.mapped = _open(self.path)
        eva_native = "visual.pos_embed" in shapes or any(k.startswith("visual.blocks.") for k in shapes)
        self._names = _eva_names(shapes, model) if eva_native else {k: k for k in shapes}
        self._shapes = {k: shapes[v] for k, v in self._names.items()}

    def __getitem__(self, name: str) -> Tensor:
        return self._read(self._names[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def check(self, model: nn.Module) -> None:
        """Refuse missing/unexpected keys and shape mismatches, naming them."""
        own = model.state_dict(keep_vars=True)
        mismatched = [
            f"{k}: file {tuple(s)} vs model {tuple(own[k].shape)}"
            for k, s in self._shapes.items()
            if k in own and own[k].shape != s
        ]
        missing = sorted(set(own) - set(self._shapes))
        unexpected = sorted(set(self._shapes) - set(own))
        if mismatched or missing or unexpected:
            lines = [f"checkpoint {self.path} does not match the model:"]
            lines += [f"  shape mismatch {m}" for m in mismatched[:10]]
            lines += [f"  missing {k}" for k in missing[:10]] + [f"  unexpected {k}" for k in unexpected[:10]]
            raise CheckpointError("\n".join(lines))

    def release(self, tensor: Tensor) -> None:
        """Drop the file pages behind a tensor read from this file, once it has been copied.

        The mapping is private and never written, so the kernel re-reads the pages should they be touched
        again; without this, every page read stays in the process's resident set until the file is closed.
        """
        if not self.mapped or tensor.numel() == 0:
            return
        page = mmap.PAGESIZE
        start = -(-tensor.data_ptr() // page) * page  # whole pages inside the tensor only: neighbours keep theirs
        end = (tensor.data_ptr() + tensor.numel() * tensor.element_size()) // page * page
        if end > start:
            ctypes.CDLL(None).madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), mmap.MADV_DONTNEED)


def load_clip_weights(model: nn.Module, path: str | Path) -> None:
    """Load a CLIP / EVA-CLIP checkpoint of any supported format into an allocated open_clip model."""
    weights = ClipWeights(path, model)
    weights.check(model)
    model.load_state_dict(dict(weights.items()), strict=True)
