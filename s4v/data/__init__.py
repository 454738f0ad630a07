"""Video data: decoding (DALI on GPU/CPU, PyAV fallback), sampling, formats, augmentation, loaders.

Public API: `DataConfig`, `build_loader`, `read_clip`. Imported lazily so `s4v synth` does not pay
for torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DataConfig": "s4v.data.config",
    "build_loader": "s4v.data.loader",
    "read_clip": "s4v.data.decode",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 's4v.data' has no attribute {name!r}")
