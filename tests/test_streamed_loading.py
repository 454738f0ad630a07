"""Towers built on the meta device and made real tensor by tensor (checkpoint streamed, or random init replayed)."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from s4v.models import BACKBONES, build_clip, create_model, create_retrieval_model
from s4v.models.checkpoint import CheckpointError, load_clip_weights

IMAGES = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _source(backbone: str) -> torch.nn.Module:
    torch.manual_seed(3)
    return open_clip.create_model(BACKBONES[backbone].open_clip, pretrained=None).eval()


def _write(fmt: str, backbone: str, tmp_path: Path) -> Path:
    state = _source(backbone).state_dict()
    path = tmp_path / f"{fmt}.pt"
    if fmt == "openai":
        torch.save(state | {"context_length": torch.tensor(32)}, path)
    elif fmt == "openai-fp16":
        torch.save({k: v.half() for k, v in state.items()}, path)
    elif fmt == "open_clip-wrapped":
        torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    elif fmt == "eva-native":
        torch.save({k.replace("visual.trunk.", "visual."): v for k, v in state.items()}, path)
    elif fmt == "safetensors":
        path = path.with_suffix(".safetensors")
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt == "torchscript":
        source = _source(backbone)
        archive = torch.jit.trace(source, (IMAGES, torch.zeros(1, 32, dtype=torch.long)), check_trace=False)
        torch.jit.save(archive, str(path))
    return path


CASES = [
    ("tiny", "openai"),
    ("tiny", "openai-fp16"),
    ("tiny", "open_clip-wrapped"),
    ("tiny", "safetensors"),
    ("tiny", "torchscript"),
    ("tiny-eva", "open_clip-wrapped"),
    ("tiny-eva", "safetensors"),
    ("tiny-eva", "eva-native"),
]


@pytest.mark.parametrize(("backbone", "fmt"), CASES)
def test_streamed_load_equals_eager_load(tmp_path: Path, backbone: str, fmt: str) -> None:
    path = _write(fmt, backbone, tmp_path)
    eager = build_clip(backbone, device="meta").to_empty(device="cpu")
    load_clip_weights(eager, path)  # today's path: an allocated fp32 model, loaded whole
    expected = eager.state_dict()
    full = build_clip(backbone, checkpoint=str(path)).state_dict()
    assert full.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(full[k], v), k
    visual = build_clip(backbone, checkpoint=str(path), dtype=torch.bfloat16, parts=("visual",))
    for k, v in visual.visual.state_dict().items():
        ref = expected[f"visual.{k}"]
        assert torch.equal(v, ref.to(torch.bfloat16) if ref.is_floating_point() else ref), k
    assert all(t.is_meta for n, t in visual.state_dict().items() if not n.startswith("visual."))


@pytest.mark.parametrize("backbone", ["tiny", "tiny-eva"])
def test_random_init_in_bf16_equals_fp32_init_cast(backbone: str) -> None:
    torch.manual_seed(0)
    fp32 = build_clip(backbone)
    after_fp32 = torch.rand(4)
    torch.manual_seed(0)
    eager = open_clip.create_model(BACKBONES[backbone].open_clip, pretrained=None)  # an eager build, as before
    after_eager = torch.rand(4)
    torch.manual_seed(0)
    bf16 = build_clip(backbone, dtype=torch.bfloat16, parts=("visual",))
    after_bf16 = torch.rand(4)
    assert torch.equal(after_fp32, after_eager) and torch.equal(after_bf16, after_eager)  # later draws unchanged
    for k, v in eager.state_dict().items():
        assert torch.equal(fp32.state_dict()[k], v), k
    for k, v in eager.visual.state_dict().items():
        got = bf16.visual.state_dict()[k]
        assert got.dtype == (torch.bfloat16 if v.is_floating_point() else v.dtype)
        assert torch.equal(got, v.to(got.dtype)), k


def test_recognition_builds_no_text_tower_and_retrieval_does() -> None:
    model = create_model("tiny", 5, frozen_dtype=torch.bfloat16)
    assert model.backbone.dtype == torch.bfloat16
    assert not any(p.is_meta for p in model.parameters())
    retrieval = create_retrieval_model("tiny-retrieval", frozen_dtype=torch.bfloat16)
    assert not any(t.is_meta for t in retrieval.state_dict().values())
    text = next(p for n, p in retrieval.named_parameters() if n.startswith("text."))
    assert text.dtype == torch.float32 and text.requires_grad


def test_recognition_visual_only_build_allocates_no_text_tensor() -> None:
    clip = build_clip("tiny", parts=("visual",))
    text = [t for n, t in clip.state_dict().items() if not n.startswith("visual.")]
    assert text and all(t.is_meta for t in text)
    assert clip.attn_mask.is_meta  # the text tower's non-persistent buffer, too


@pytest.mark.parametrize("backbone", ["tiny", "tiny-eva"])
def test_bad_checkpoint_fails_naming_the_key(tmp_path: Path, backbone: str) -> None:
    state = _source(backbone).state_dict()
    key = next(k for k in state if k.startswith("visual.") and state[k].ndim == 2)
    path = tmp_path / "bad.pt"
    torch.save({k: v for k, v in state.items() if k != key}, path)
    with pytest.raises(CheckpointError, match=rf"missing {key}"):
        build_clip(backbone, checkpoint=str(path), dtype=torch.bfloat16, parts=("visual",))
    torch.save(state | {key: state[key][:, :3]}, path)
    with pytest.raises(CheckpointError, match=rf"shape mismatch {key}"):
        build_clip(backbone, checkpoint=str(path), parts=("visual",))
    text_key = "text_projection" if backbone == "tiny" else "text.text_projection"
    torch.save({k: v for k, v in state.items() if k != text_key}, path)  # text keys are checked, not read
    with pytest.raises(CheckpointError, match=rf"missing {text_key}"):
        build_clip(backbone, checkpoint=str(path), parts=("visual",))
