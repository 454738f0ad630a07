"""The compute-dtype preparation shared by training and evaluation, the pickling of fp32 BatchNorms,
the data position of checkpoints, the task protocol, and the errors a user can fix."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from torch import nn

from s4v.config import load_config, load_run
from s4v.core.errors import UserError
from s4v.models import create_model
from s4v.train.checkpoint import DataPosition, check_resumable, write_meta
from s4v.train.engine import plan_batch
from s4v.train.precision import (
    Fp32BatchNorm1d,
    Fp32BatchNorm2d,
    Fp32BatchNorm3d,
    TrainableView,
    keep_batchnorm_fp32,
    prepare_for_dtype,
)
from s4v.train.tasks import RecognitionTask, make_task


class _Norms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.one, self.two, self.three = nn.BatchNorm1d(3), nn.BatchNorm2d(3), nn.BatchNorm3d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.three(x) + self.two(x[:, :, 0]).unsqueeze(2) + self.one(x.flatten(2)).view_as(x)


def test_fp32_batchnorm_classes_are_named_and_pickle() -> None:
    torch.manual_seed(0)
    module = _Norms()
    for p in module.parameters():  # what bf16 training does: parameters cast, statistics fp32
        p.data = p.data.to(torch.bfloat16)
    assert keep_batchnorm_fp32(module) == 3
    assert keep_batchnorm_fp32(module) == 0  # already patched
    assert (type(module.one), type(module.two), type(module.three)) == (
        Fp32BatchNorm1d,
        Fp32BatchNorm2d,
        Fp32BatchNorm3d,
    )
    x = torch.randn(4, 3, 2, 5, 5).to(torch.bfloat16)
    module.eval()
    expected = module(x)
    buffer = io.BytesIO()
    torch.save(module, buffer)  # pickles the whole module: needs importable classes
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded.three) is Fp32BatchNorm3d and loaded.three.running_mean.dtype == torch.float32
    assert torch.equal(loaded(x), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prepare_for_dtype_casts_tower_and_trainable_params_but_not_batchnorm_statistics(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = create_model("tiny", num_classes=4)
    view = prepare_for_dtype(model, dtype)
    assert isinstance(view, TrainableView)
    assert {id(p) for p in view.parameters()} == {id(p) for p in model.trainable_parameters()}
    assert all(p.dtype == dtype for p in model.parameters())
    norms = [m for m in view.modules() if isinstance(m, nn.BatchNorm3d)]
    assert norms and all(m.running_mean.dtype == torch.float32 for m in norms)
    assert all(isinstance(m, Fp32BatchNorm3d) == (dtype != torch.float32) for m in norms)
    model.eval()
    logits = model(torch.randn(2, 8, 3, 64, 64).to(dtype))
    assert logits.dtype == dtype and torch.isfinite(logits.float()).all()


def test_data_position_round_trips_the_checkpoint_dict_and_reads_the_per_rank_form() -> None:
    position = DataPosition()
    position.load_state_dict({"epoch": 1, "videos": 96, "step": 16}, videos_per_batch=8)
    assert position == DataPosition(1, 96, 16) and position.state_dict() == {"epoch": 1, "videos": 96, "step": 16}
    position.next_epoch()
    assert position.state_dict() == {"epoch": 2, "videos": 0, "step": 16}
    # Before the global count: 6 micro-batches per rank, each of 4 videos on each of 2 ranks.
    position.load_state_dict({"epoch": 1, "batch": 6, "step": 3}, videos_per_batch=4 * 2)
    assert position == DataPosition(1, 48, 3)


def test_recognition_task_loss_through_make_task() -> None:
    cfg = load_config(None, ["optim.label_smoothing=0.0"])
    task = make_task(cfg, torch.float32, torch.device("cpu"))
    assert isinstance(task, RecognitionTask)
    weight = torch.randn(5, 3)

    def model(video: torch.Tensor) -> torch.Tensor:
        return video.mean(dim=(1, 3, 4)) @ weight.T

    batch = {"video": torch.randn(2, 4, 3, 8, 8), "label": torch.tensor([1, 3]), "index": torch.tensor([0, 1])}
    expected = nn.functional.cross_entropy(model(batch["video"]), batch["label"])
    torch.testing.assert_close(task.loss(model, batch, epoch=0), expected[None])  # one member's loss


def test_recognition_task_loss_of_a_sweep_is_each_members_own() -> None:
    cfg, members = load_run(None, ["sweep.grid.optim.label_smoothing=[0.0,0.3]"])
    task = make_task(cfg, torch.float32, torch.device("cpu"), members=members)  # the members resolved at load
    logits = torch.randn(2, 4, 5)  # (members, batch, classes)
    batch = {"video": torch.zeros(4), "label": torch.tensor([1, 3, 0, 2]), "index": torch.arange(4)}
    expected = [
        nn.functional.cross_entropy(logits[k], batch["label"], label_smoothing=s) for k, s in enumerate((0.0, 0.3))
    ]
    torch.testing.assert_close(task.loss(lambda v: logits, batch, epoch=0), torch.stack(expected))


def test_batch_sizes_that_do_not_divide_are_a_user_error() -> None:
    with pytest.raises(UserError, match="not a multiple"):
        plan_batch(load_config(None, ["optim.batch_size=10"]).optim, 4, 1)


def test_resuming_from_a_checkpoint_of_another_model_is_a_user_error(tmp_path: Path) -> None:
    cfg = load_config(None, [])
    meta = {"num_classes": 4, "backbone_fingerprint": [1.0, 2.0, 3.0]}
    with pytest.raises(UserError, match="no meta.json"):
        check_resumable(tmp_path, cfg, meta)
    write_meta(tmp_path, load_config(None, ["model.kind=meanpool"]), meta)
    with pytest.raises(UserError, match="model.kind='meanpool' there, 'side4video' here"):
        check_resumable(tmp_path, cfg, meta)
    write_meta(tmp_path, load_config(None, ["optim.batch_size=64"]), meta)
    with pytest.raises(UserError, match="optim.batch_size=64 there, 128 here"):
        check_resumable(tmp_path, cfg, meta)
    write_meta(tmp_path, cfg, {**meta, "num_classes": 5})
    with pytest.raises(UserError, match="5 classes there, 4 here"):
        check_resumable(tmp_path, cfg, meta)
    write_meta(tmp_path, cfg, {**meta, "backbone_fingerprint": [1.5, 2.0, 3.0]})
    with pytest.raises(UserError, match="frozen tower differs"):
        check_resumable(tmp_path, cfg, meta)
    write_meta(tmp_path, cfg, meta)
    assert check_resumable(tmp_path, cfg, meta) == meta
