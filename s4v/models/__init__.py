"""Frozen towers, the Side4Video side network, recognition heads and presets."""

from s4v.models.backbone import BACKBONES, FrozenBackbone, TowerShape, build_clip
from s4v.models.classifier import MeanPoolProbe, Side4VideoClassifier, VideoClassifier
from s4v.models.presets import MODEL_KINDS, PRESETS, RETRIEVAL_PRESETS, Preset, create_model, create_retrieval_model
from s4v.models.retrieval import VideoTextRetrieval, symmetric_info_nce

__all__ = [
    "BACKBONES",
    "FrozenBackbone",
    "TowerShape",
    "build_clip",
    "MeanPoolProbe",
    "Side4VideoClassifier",
    "VideoClassifier",
    "MODEL_KINDS",
    "PRESETS",
    "Preset",
    "create_model",
    "RETRIEVAL_PRESETS",
    "create_retrieval_model",
    "VideoTextRetrieval",
    "symmetric_info_nce",
]
