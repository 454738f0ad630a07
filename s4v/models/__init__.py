"""Frozen towers, the Side4Video side network, recognition and retrieval models, and their factories.

Names are resolved lazily (PEP 562): `s4v.models.architectures` is plain data, and importing it
(the config loader does, to check preset names) must not pull in torch and open_clip.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BACKBONES": "s4v.models.architectures",
    "PRESETS": "s4v.models.architectures",
    "Backbone": "s4v.models.architectures",
    "Preset": "s4v.models.architectures",
    "FrozenBackbone": "s4v.models.backbone",
    "TowerShape": "s4v.models.backbone",
    "build_clip": "s4v.models.backbone",
    "MeanPoolProbe": "s4v.models.classifier",
    "Side4VideoClassifier": "s4v.models.classifier",
    "VideoClassifier": "s4v.models.classifier",
    "MODEL_KINDS": "s4v.models.presets",
    "create_model": "s4v.models.presets",
    "create_retrieval_model": "s4v.models.presets",
    "SideOptions": "s4v.models.side",
    "SideSpec": "s4v.models.side_spec",
    "VideoTextRetrieval": "s4v.models.retrieval",
    "symmetric_info_nce": "s4v.models.retrieval",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 's4v.models' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
