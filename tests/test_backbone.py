"""Frozen towers against open_clip itself, attention backends, and checkpoint formats."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from s4v.models import BACKBONES, FrozenBackbone, build_clip
from s4v.models.checkpoint import CheckpointError, load_clip_weights

IMAGES = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def reference_model(backbone: str) -> torch.nn.Module:
    """A separately built, untouched open_clip model (its own nn.MultiheadAttention path)."""
    torch.manual_seed(0)
    return open_clip.create_model(BACKBONES[backbone].open_clip, pretrained=None).eval()


@pytest.mark.parametrize("backbone", ["tiny", "tiny-eva"])
def test_final_cls_equals_open_clip_encode_image(backbone: str) -> None:
    ref = reference_model(backbone)
    ours = build_clip(backbone)
    ours.load_state_dict(ref.state_dict())
    tower = FrozenBackbone(ours.visual)
    with torch.no_grad():
        expected = ref.encode_image(IMAGES)
    torch.testing.assert_close(tower(IMAGES), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backbone", ["tiny", "tiny-eva"])
def test_layer_outputs_match_open_clip_forward_intermediates(backbone: str) -> None:
    ref = reference_model(backbone)
    tower = FrozenBackbone(build_clip(backbone).visual)
    tower.visual.load_state_dict(ref.visual.state_dict())
    with torch.no_grad():
        inter = ref.visual.forward_intermediates(
            IMAGES, output_fmt="NLC", output_extra_tokens=True, intermediates_only=True
        )
    layers = list(tower.layer_outputs(IMAGES))
    assert len(layers) == tower.shape.layers
    patches = inter["image_intermediates"]
    prefix = inter.get("image_intermediates_prefix") or inter.get("image_intermediates_prefix_tokens")
    for ours, ref_patch, ref_cls in zip(layers, patches, prefix, strict=True):
        torch.testing.assert_close(ours[:, 1:], ref_patch, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours[:, :1], ref_cls, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backbone", ["tiny", "tiny-eva"])
def test_sdpa_and_math_attention_agree(backbone: str) -> None:
    clip = build_clip(backbone)
    state = clip.visual.state_dict()
    sdpa = FrozenBackbone(clip.visual, attn_backend="sdpa")
    out_sdpa = [x.clone() for x in sdpa.layer_outputs(IMAGES)]
    other = build_clip(backbone).visual
    other.load_state_dict(state)
    out_math = list(FrozenBackbone(other, attn_backend="math").layer_outputs(IMAGES))
    for a, b in zip(out_sdpa, out_math, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_backbone_outputs_need_no_grad_and_record_no_graph() -> None:
    tower = FrozenBackbone(build_clip("tiny").visual)
    assert not any(p.requires_grad for p in tower.parameters())
    out = tower(IMAGES.requires_grad_(False))
    assert out.grad_fn is None and not out.requires_grad


# --- checkpoint formats --------------------------------------------------------------------------------------------


def _features(model: torch.nn.Module) -> torch.Tensor:
    return FrozenBackbone(model.visual)(IMAGES)


def test_openai_clip_state_dict_loads(tmp_path: Path) -> None:
    source = reference_model("tiny")  # OpenAI CLIP layout == open_clip's CLIP layout with QuickGELU
    path = tmp_path / "ViT-tiny.pt"
    torch.save(source.state_dict(), path)
    loaded = build_clip("tiny", checkpoint=str(path))
    torch.testing.assert_close(_features(loaded), _features(source), rtol=0, atol=0)


def test_openai_torchscript_archive_loads(tmp_path: Path) -> None:
    """OpenAI distributes TorchScript archives of the whole CLIP model."""
    source = reference_model("tiny")
    archive = torch.jit.trace(source, (IMAGES[:1], torch.zeros(1, 32, dtype=torch.long)), check_trace=False)
    path = tmp_path / "ViT-tiny-jit.pt"
    torch.jit.save(archive, str(path))
    torch.testing.assert_close(_features(build_clip("tiny", checkpoint=str(path))), _features(source), rtol=0, atol=0)


def test_openai_fp16_state_dict_loads_into_fp32_tower(tmp_path: Path) -> None:
    source = reference_model("tiny").half()
    path = tmp_path / "ViT-tiny-fp16.pt"
    torch.save(source.state_dict() | {"context_length": torch.tensor(32)}, path)
    loaded = build_clip("tiny", checkpoint=str(path))
    assert loaded.visual.proj.dtype == torch.float32
    torch.testing.assert_close(loaded.visual.proj, source.visual.proj.float(), rtol=0, atol=0)


def test_open_clip_wrapped_checkpoint_loads(tmp_path: Path) -> None:
    source = reference_model("tiny")
    path = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    torch.testing.assert_close(_features(build_clip("tiny", checkpoint=str(path))), _features(source), rtol=0, atol=0)


@pytest.mark.parametrize("backbone", ["tiny", "tiny-eva"])
def test_safetensors_loads(tmp_path: Path, backbone: str) -> None:
    source = reference_model(backbone)
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = build_clip(backbone, checkpoint=str(path))
    torch.testing.assert_close(_features(loaded), _features(source), rtol=0, atol=0)


def test_eva_clip_native_layout_loads(tmp_path: Path) -> None:
    source = reference_model("tiny-eva")
    native = {k.replace("visual.trunk.", "visual."): v for k, v in source.state_dict().items()}
    assert "visual.pos_embed" in native and "visual.blocks.0.attn.qkv.weight" in native
    path = tmp_path / "EVA02_CLIP_tiny.pt"
    torch.save(native, path)
    loaded = build_clip("tiny-eva", checkpoint=str(path))
    torch.testing.assert_close(_features(loaded), _features(source), rtol=0, atol=0)


def test_missing_file_and_wrong_shapes_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        build_clip("tiny", checkpoint=str(tmp_path / "nope.pt"))
    path = tmp_path / "eva.pt"
    torch.save(reference_model("tiny-eva").state_dict(), path)
    with pytest.raises(CheckpointError, match="does not match"):
        load_clip_weights(build_clip("tiny"), path)
    bad = reference_model("tiny").state_dict()
    bad["visual.proj"] = bad["visual.proj"][:, :10]
    torch.save(bad, path)
    with pytest.raises(CheckpointError, match=r"shape mismatch visual.proj"):
        load_clip_weights(build_clip("tiny"), path)
