"""`model.compile_frozen`: torch.compile of the frozen blocks gives the eager model's outputs and side gradients.

Runs inductor's CPU backend (it compiles C++ with the machine's compiler). Each test compiles one frozen
block; a cold compile of the tiny block takes ~15 s on 2 cores.
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch._dynamo.utils

from s4v.config import load_config
from s4v.core.errors import UserError
from s4v.models import FrozenBackbone, build_clip, create_model
from s4v.train.build import build_model

VIDEO = torch.randn(2, 4, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def _cpp_compiler() -> None:
    assert shutil.which("g++") or shutil.which("c++"), "inductor's CPU backend needs a C++ compiler (g++)"


def _pair(**kwargs) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    eager = create_model("tiny", 5, **kwargs)
    compiled = create_model("tiny", 5, compile_frozen="default", **kwargs)
    compiled.load_state_dict(eager.state_dict())
    return eager, compiled


def _unique_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_compiled_tower_matches_eager_forward_and_side_gradients() -> None:
    torch._dynamo.reset()  # no graph of an earlier test to reuse: the count below is this model's
    eager, compiled = _pair()
    labels = torch.tensor([1, 3])
    graphs = _unique_graphs()
    logits = {}
    for name, model in (("eager", eager), ("compiled", compiled)):
        model.train()
        logits[name] = model(VIDEO)
        torch.nn.functional.cross_entropy(logits[name], labels).backward()
    # The tower's 4 blocks are one graph: compile time does not grow with depth (ViT-E/14 has 64 blocks).
    assert _unique_graphs() - graphs == 1
    torch.testing.assert_close(logits["compiled"], logits["eager"], rtol=1e-5, atol=1e-5)
    trainable = [(n, p) for n, p in eager.named_parameters() if p.requires_grad]
    assert trainable and all(not p.requires_grad for p in compiled.backbone.parameters())
    params = dict(compiled.named_parameters())
    for name, p in trainable:
        torch.testing.assert_close(params[name].grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_compiled_tower_under_no_grad_and_math_attention() -> None:
    """Eval under no_grad with the 'math' SDPA context, which the compiled graph traces (and guards on)."""
    clip = build_clip("tiny")
    state = clip.visual.state_dict()
    eager = FrozenBackbone(clip.visual, attn_backend="math")
    other = build_clip("tiny").visual
    other.load_state_dict(state)
    compiled = FrozenBackbone(other, attn_backend="math", compile_frozen="default")
    images = VIDEO.flatten(0, 1)
    with torch.no_grad():
        expected = [x.clone() for x in eager.layer_outputs(images)]
        actual = [x.clone() for x in compiled.layer_outputs(images)]
    for a, b in zip(actual, expected, strict=True):
        assert a.grad_fn is None
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_config_field_reaches_the_tower() -> None:
    cfg = load_config(None, ["model.compile_frozen=reduce-overhead"])
    model = build_model(cfg, 3, torch.device("cpu"))
    assert model.backbone.compile_frozen == "reduce-overhead"
    assert build_model(load_config(None, []), 3, torch.device("cpu")).backbone.compile_frozen == "none"
    with pytest.raises(UserError, match="model.compile_frozen: 'max_autotune' is not one of"):
        load_config(None, ["model.compile_frozen=max_autotune"])
    with pytest.raises(ValueError, match="unknown compile mode"):
        FrozenBackbone(build_clip("tiny").visual, compile_frozen="fast")  # type: ignore[arg-type]
