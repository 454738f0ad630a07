"""Side blocks recomputed in backward (`model.side_checkpoint`) against the same model keeping its activations."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from s4v.config import load_config
from s4v.core.errors import UserError
from s4v.memory.step import account_step
from s4v.memory.tracker import saved_activation_bytes
from s4v.memory.workloads import MethodSpec, workload
from s4v.models import SideSpec, create_model, create_retrieval_model
from s4v.models.backbone import FrozenBackbone, build_clip
from s4v.models.classifier import Side4VideoClassifier
from s4v.train.build import build_model


def _pre(checkpoint: bool, temporal_impl: str = "reference") -> nn.Module:
    return create_model("tiny", 5, side=SideSpec.of_preset("tiny", checkpoint=checkpoint, temporal_impl=temporal_impl))


def _post(checkpoint: bool) -> nn.Module:
    """No preset is a tiny EVA one: the tiny EVA tower with the post-norm (ViT-E) side network."""
    spec = SideSpec(64, 2, form="post", checkpoint=checkpoint, temporal_impl="reference")
    return Side4VideoClassifier(FrozenBackbone(build_clip("tiny-eva").visual), spec, 5)


BUILDS: dict[str, Callable[[bool], nn.Module]] = {
    "pre": _pre,
    "post": _post,
    "pre-triton": lambda checkpoint: _pre(checkpoint, "triton"),  # fused kernels, interpreted on CPU
}


def _pair(build: Callable[[bool], nn.Module]) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    plain = build(False).train()
    checkpointed = build(True).train()
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.side.checkpoint and not plain.side.checkpoint
    return plain, checkpointed


@pytest.mark.parametrize("form", sorted(BUILDS))
def test_checkpointed_side_blocks_give_the_same_step(form: str) -> None:
    """Same loss and gradients (bitwise: the recompute runs the same kernels on the same inputs), and
    BatchNorm running statistics updated once, as without checkpointing."""
    plain, checkpointed = _pair(BUILDS[form])
    torch.manual_seed(1)
    video, labels = torch.randn(2, 8, 3, 64, 64), torch.tensor([1, 3])
    losses = []
    for model in (plain, checkpointed):
        loss = F.cross_entropy(model(video), labels)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=0, atol=0)
    named = dict(checkpointed.named_parameters())
    trainable = [(n, p) for n, p in plain.named_parameters() if p.requires_grad]
    assert len(trainable) > 20
    for name, p in trainable:
        torch.testing.assert_close(named[name].grad, p.grad, rtol=0, atol=0, msg=name)
    buffers = dict(checkpointed.named_buffers())
    tracked = {n: b for n, b in plain.named_buffers() if n.endswith("num_batches_tracked")}
    assert len(tracked) >= 5 and all(int(b) == 1 for b in tracked.values())  # one forward, one update
    for name, b in plain.named_buffers():
        torch.testing.assert_close(buffers[name], b, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("form", ["pre", "post"])
def test_checkpointing_keeps_fewer_activations(form: str) -> None:
    """What stays for backward: per block only its inputs (side tokens s, frozen features Z)."""
    plain, checkpointed = _pair(BUILDS[form])
    video = torch.randn(2, 8, 3, 64, 64)
    saved = {
        name: saved_activation_bytes(lambda m=model: m(video), model.parameters())
        for name, model in (("plain", plain), ("checkpointed", checkpointed))
    }
    assert saved["checkpointed"] < saved["plain"] / 3, saved


def test_meta_accounting_of_checkpointed_blocks() -> None:
    """The accounting runs the checkpointed model (recompute under the same emulated numerics): fewer
    saved bytes and a lower peak, which includes the recompute of a block in backward."""
    mems = {
        checkpoint: account_step(
            workload(MethodSpec("side4video", "tiny", 2, options=dict(layers=2, dim=64, checkpoint=checkpoint))),
            "amp",
            "flash",
        )
        for checkpoint in (False, True)
    }
    plain, checkpointed = mems[False], mems[True]
    assert checkpointed.saved_activations < plain.saved_activations / 2
    assert checkpointed.peak < plain.peak
    # in backward a block's activations are rebuilt: the peak is above everything held at the end of the forward
    assert checkpointed.peak > checkpointed.accounted + checkpointed.grads


def test_presets_choose_checkpointing_and_the_config_overrides() -> None:
    assert create_model("e14-light", 174, device="meta").side.checkpoint  # as the authors' ViT-E code
    no_checkpoint = SideSpec.of_preset("e14-light", checkpoint=False)
    assert not create_model("e14-light", 174, device="meta", side=no_checkpoint).side.checkpoint
    assert not create_model("tiny", 5).side.checkpoint
    checkpointed = SideSpec.of_preset("tiny-retrieval", checkpoint=True)
    assert create_retrieval_model("tiny-retrieval", side=checkpointed).side.checkpoint
    with pytest.raises(ValueError, match="no side network"):
        create_model("tiny", 5, kind="meanpool", side=SideSpec.of_preset("tiny", checkpoint=True))
    cfg = load_config(None, ["model.side_checkpoint=true"])
    assert cfg.model.side_checkpoint is True and load_config(None).model.side_checkpoint is None
    assert build_model(cfg, 4, torch.device("cpu")).side.checkpoint
    with pytest.raises(UserError, match="model.side_checkpoint: expected bool"):
        load_config(None, ["model.side_checkpoint=2"])
    with pytest.raises(UserError, match="has no side network"):
        load_config(None, ["model.side_checkpoint=true", "model.kind=meanpool"])
