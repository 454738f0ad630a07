"""Side4Video model: gradient isolation, saved activations, layer interleaving, [CLS] shift, param counts."""

from __future__ import annotations

import pytest
import torch

from s4v.models import PRESETS, Side4VideoClassifier, SideSpec, build_clip, create_model
from s4v.models.backbone import FrozenBackbone
from s4v.models.side import interval_layers, shift_cls

VIDEO = (2, 4, 3, 64, 64)  # B, T, C, H, W for the tiny tower (patch 8 -> N = 64)


def tiny_model(side_layers: int = 2) -> Side4VideoClassifier:
    torch.manual_seed(0)
    return Side4VideoClassifier(
        FrozenBackbone(build_clip("tiny").visual),
        SideSpec(dim=64, layers=side_layers, temporal_impl="reference"),
        num_classes=5,
        dropout=0.0,
    )


def test_no_gradient_reaches_the_backbone_and_every_side_parameter_learns() -> None:
    model = tiny_model()
    model(torch.randn(VIDEO)).logsumexp(-1).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert all(p.grad.abs().sum() > 0 for p in model.trainable_parameters())


def test_only_down_projection_inputs_are_saved_from_the_frozen_tower() -> None:
    model = tiny_model(side_layers=2)
    shape = model.backbone.shape
    frozen_activation = (VIDEO[0] * VIDEO[1], shape.num_patches + 1, shape.width)
    layer_outputs: dict[int, int] = {}
    for index, block in enumerate(model.backbone.blocks):
        block.register_forward_hook(lambda m, i, o, index=index: layer_outputs.__setitem__(index, o.data_ptr()))
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(VIDEO))
    frozen_saved = {t.untyped_storage().data_ptr() for t in saved if t.shape == frozen_activation}
    read = model.side.read_layers
    assert read == [1, 3]
    assert frozen_saved == {layer_outputs[i] for i in read}
    assert sum(t.shape == frozen_activation for t in saved) == len(read)  # one per fused layer, no LN copy
    assert not any(t.shape[-1] == shape.width and t.dim() > 2 for t in saved if t.shape != frozen_activation)


def test_frozen_and_side_layers_run_interleaved() -> None:
    model = tiny_model(side_layers=2)
    order: list[str] = []
    for i, block in enumerate(model.backbone.blocks):
        block.register_forward_hook(lambda *a, i=i: order.append(f"F{i}"))
    for k, block in enumerate(model.side.blocks):
        block.register_forward_hook(lambda *a, k=k: order.append(f"S{k}"))
    model(torch.randn(VIDEO))
    assert order == ["F0", "F1", "S0", "F2", "F3", "S1"]


def test_cls_shift_moves_channel_halves_with_zero_ends() -> None:
    cls = torch.arange(1, 4).float().view(1, 3, 1).repeat(1, 1, 4)  # frame t holds value t+1 on 4 channels
    out = shift_cls(cls)[0]
    assert out[:, :2].tolist() == [[2, 2], [3, 3], [0, 0]]  # first half from frame t+1
    assert out[:, 2:].tolist() == [[0, 0], [1, 1], [2, 2]]  # second half from frame t-1


def test_interval_layer_selection() -> None:
    assert interval_layers(12, 12) == list(range(12))
    assert interval_layers(12, 6) == [1, 3, 5, 7, 9, 11]
    assert interval_layers(64, 32)[:3] == [1, 3, 5] and interval_layers(64, 32)[-1] == 63
    with pytest.raises(ValueError, match="cannot evenly"):
        interval_layers(12, 5)


def test_backbone_stays_frozen_and_in_eval_mode_when_training() -> None:
    model = tiny_model().train()
    assert not model.backbone.training and not model.backbone.visual.training
    assert model.side.training


# Paper Table 2 (whole millions) and an independent hand count of the same architecture (174 classes).
@pytest.mark.parametrize(
    ("preset", "paper_m", "independent_m"),
    [("b16-light", 4, 4.5), ("b16", 21, 21.1), ("l14-light", 22, 21.9), ("l14", 102, 102.1)],
)
def test_tunable_parameters_match_paper_table_2(preset: str, paper_m: int, independent_m: float) -> None:
    model = create_model(preset, num_classes=174, device="meta")
    tunable = sum(p.numel() for p in model.trainable_parameters()) / 1e6
    assert abs(tunable - independent_m) <= 0.01 * independent_m
    # b16-light counts 4.53 M, as the hand count does: Table 2's rounded "4" is 13 % below, the one preset
    # outside 5 %; the architecture is not bent to fit a rounded number.
    tolerance = 0.05 if preset != "b16-light" else 0.15
    assert abs(tunable - paper_m) <= tolerance * paper_m
    assert PRESETS[preset].paper_tunable_m == paper_m


def test_meanpool_probe_is_order_invariant() -> None:
    torch.manual_seed(0)
    probe = create_model("tiny", num_classes=3, kind="meanpool").eval()
    video = torch.randn(VIDEO)
    assert torch.allclose(probe(video), probe(video.flip(1)), atol=1e-5)
    assert [p.shape for p in probe.trainable_parameters()] == [torch.Size([3, 64]), torch.Size([3])]


def test_bad_arguments_fail_clearly() -> None:
    with pytest.raises(ValueError, match="unknown recognition preset"):
        create_model("b99", 10)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("tiny", 0)
    with pytest.raises(ValueError, match="needs CUDA"):
        create_model("tiny", 10, attn_backend="flash_attn")


def test_batchnorm_on_tokens_matches_ncthw_batchnorm_at_batch_one() -> None:
    from s4v.models.side import batchnorm_tokens

    torch.manual_seed(0)
    bn_tokens, bn_ref = torch.nn.BatchNorm3d(6), torch.nn.BatchNorm3d(6)
    x = torch.randn(1, 3, 5, 6)
    g = torch.randn(1, 3, 5, 6)
    a = x.clone().requires_grad_()
    (batchnorm_tokens(bn_tokens, a) * g).sum().backward()
    to_ncthw = lambda t: t.permute(0, 3, 1, 2).unsqueeze(-1).contiguous()  # noqa: E731
    b = to_ncthw(x).requires_grad_()  # plain contiguous NCTHW input and gradient
    (bn_ref(b) * to_ncthw(g)).sum().backward()
    torch.testing.assert_close(a.grad, b.grad.squeeze(-1).permute(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn_tokens.running_var, bn_ref.running_var)
