"""Run config and override layer (types, enumerations, preset against task and image size, paths), Table 12
configs, DeepSpeed config resolution, LR schedule, fp32 BatchNorm under bf16, the trainable view, evaluation
metrics, and a bf16 CPU run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from s4v.config import check_paths, flatten, load_config, to_dict
from s4v.core.errors import UserError
from s4v.data.config import parse_views
from s4v.models import PRESETS, create_model
from s4v.train.build import build_model
from s4v.train.engine import load_ds_config, plan_batch, resolve_ds_config
from s4v.train.evaluate import classification_metrics, predict
from s4v.train.optimizer import warmup_cosine
from s4v.train.precision import TrainableView, keep_batchnorm_fp32

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def test_yaml_then_overrides_with_type_checks() -> None:
    cfg = load_config(
        CONFIGS / "synth_tiny.yaml",
        ["optim.lr=5e-4", "data.crop_scale=[0.5, 1]", "model.dropout=0.25", "train.max_steps=3", "data.flip=null"],
    )
    assert cfg.optim.lr == 5e-4 and cfg.data.crop_scale == (0.5, 1.0) and cfg.model.dropout == 0.25
    assert cfg.train.max_steps == 3 and cfg.data.flip is None and cfg.data.root == "data/synth"
    assert cfg.optim.weight_decay == 0.15 and cfg.optim.label_smoothing == 0.1  # defaults kept
    assert flatten(to_dict(cfg))["optim.betas"] == [0.9, 0.999]
    with pytest.raises(ValueError, match="did you mean 'lr'"):
        load_config(None, ["optim.lrr=1e-3"])
    with pytest.raises(ValueError, match="optim.epochs: expected int"):
        load_config(None, ["optim.epochs=1.5"])
    with pytest.raises(ValueError, match="data.batch_size: expected int"):
        load_config(None, ["data.batch_size=big"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["optim.lr"])


def test_enumerations_are_checked_when_loaded(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        load_config(None, ["model.task=recogniton"])
    assert str(err.value) == (
        "model.task: 'recogniton' is not one of 'recognition', 'retrieval' (did you mean 'recognition'?)"
    )
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("data:\n  root: data/synth\n  fmt: ssv3\n")
    with pytest.raises(
        UserError, match=r"^data\.fmt: 'ssv3' is not one of 'list', .*'vatex' \(did you mean 'ssv2'\?\)$"
    ):
        load_config(yaml_file)
    with pytest.raises(UserError) as err:  # nothing close: no hint
        load_config(None, ["model.kind=linear"])
    assert str(err.value) == "model.kind: 'linear' is not one of 'side4video', 'meanpool'"
    with pytest.raises(UserError, match=r"did you mean 'flash_attn'"):
        load_config(None, ["model.attn_backend=flash"])
    with pytest.raises(UserError, match=r"^model\.matching: 'tokens' is not one of 'wti', 'token', 'global'"):
        load_config(None, ["model.matching=tokens"])
    with pytest.raises(UserError, match=r"^model\.temporal_impl: 'trition' .*did you mean 'triton'"):
        load_config(None, ["model.temporal_impl=trition"])
    with pytest.raises(UserError, match=r"^data\.sampling: 'tsn' is not one of 'segment', 'dense'$"):
        load_config(None, ["data.sampling=tsn"])
    with pytest.raises(UserError, match=r"^data\.backend: 'nvdec' is not one of 'auto', 'dali', 'pyav'$"):
        load_config(None, ["data.backend=nvdec"])
    with pytest.raises(UserError, match=r"^data\.test_crops: 2 is not one of 1, 3$"):
        load_config(None, ["data.test_crops=2"])
    with pytest.raises(UserError, match=r"^data\.test_crops: True is not one of 1, 3$"):  # YAML true == 1
        load_config(None, ["data.test_crops=true"])
    assert load_config(None).model.temporal_impl == "auto"
    cfg = load_config(
        None, ["model.temporal_impl=reference", "data.sampling=dense", "data.backend=pyav", "data.test_crops=3"]
    )
    assert (cfg.model.temporal_impl, cfg.data.sampling, cfg.data.backend, cfg.data.test_crops) == (
        "reference",
        "dense",
        "pyav",
        3,
    )


def test_preset_must_belong_to_the_task_and_set_the_image_size() -> None:
    with pytest.raises(UserError, match=r"^model\.preset: 'tinyy' is not one of 'tiny', .*\(did you mean 'tiny'\?\)$"):
        load_config(None, ["model.preset=tinyy"])
    with pytest.raises(
        UserError,
        match=r"^model\.preset: 'tiny' is a recognition preset but model\.task is 'retrieval'; "
        r"retrieval presets: 'tiny-retrieval', .* \(did you mean 'tiny-retrieval'\?\)$",
    ):
        load_config(None, ["model.task=retrieval"])
    with pytest.raises(UserError, match=r"did you mean 'b16-retrieval'"):
        load_config(None, ["model.task=retrieval", "model.preset=b16", "data.image_size=224"])
    with pytest.raises(UserError, match=r"'tiny-retrieval' is a retrieval preset .* \(did you mean 'tiny'\?\)"):
        load_config(None, ["model.preset=tiny-retrieval"])
    with pytest.raises(UserError, match=r"^data\.image_size: 64 but preset 'b16' takes 224-pixel frames"):
        load_config(None, ["model.preset=b16"])
    assert load_config(None, ["model.task=retrieval", "model.preset=tiny-retrieval"]).model.preset == "tiny-retrieval"
    assert load_config(None, ["model.preset=b16", "data.image_size=224"]).data.image_size == 224
    for path in sorted(CONFIGS.glob("*.yaml")):  # every shipped config passes the load-time checks
        load_config(path)


def test_load_errors_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  preset: [tiny\n")
    with pytest.raises(UserError, match=r"broken\.yaml: invalid YAML: .* at line 3, column 1$"):
        load_config(broken)
    with pytest.raises(UserError, match=r"^model: expected a mapping"):
        load_config(None, ["model=3"])


def test_paths_are_checked_apart_from_loading(tmp_path: Path) -> None:
    """A config may name another machine's data, so loading accepts it; the entry points then check."""
    cfg = load_config(None, [f"data.root={tmp_path / 'nope'}"])
    with pytest.raises(UserError, match=r"^data\.root: '.*nope' is not a directory$"):
        check_paths(cfg)
    check_paths(load_config(None, [f"data.root={tmp_path}"]))
    with pytest.raises(UserError, match=r"^model\.checkpoint: '.*w\.pt' is not a file"):
        check_paths(load_config(None, [f"data.root={tmp_path}", f"model.checkpoint={tmp_path / 'w.pt'}"]))


def test_views_spec() -> None:
    assert parse_views("3x2") == (3, 2) and parse_views("1X1") == (1, 1)
    for bad, reason in (("3by2", "expected CROPSxCLIPS"), ("2x1", "crops must be one of 1, 3"), ("3x0", "at least 1")):
        with pytest.raises(UserError, match=reason):
            parse_views(bad)


# (dataset, backbone): (preset, lr, global batch, epochs, warmup epochs) as read from paper Table 12
TABLE12 = {
    ("k400", "vitb"): ("b16", 1e-3, 256, 30, 4),
    ("k400", "vitl"): ("l14", 1e-3, 256, 30, 4),
    ("k400", "vite"): ("e14-light", 1e-4, 128, 20, 4),
    ("ssv1", "vitb"): ("b16", 1e-3, 128, 40, 4),
    ("ssv1", "vitl"): ("l14", 1e-3, 128, 40, 4),
    ("ssv1", "vite"): ("e14-light", 1e-4, 64, 30, 6),
    ("ssv2", "vitb"): ("b16", 1e-3, 128, 30, 4),
    ("ssv2", "vitl"): ("l14", 1e-3, 128, 30, 4),
    ("ssv2", "vite"): ("e14-light", 1e-4, 64, 25, 6),
}


@pytest.mark.parametrize("key", sorted(TABLE12))
def test_table12_configs(key: tuple[str, str]) -> None:
    dataset, backbone = key
    cfg = load_config(CONFIGS / f"{dataset}_{backbone}.yaml")
    preset, lr, batch, epochs, warmup = TABLE12[key]
    assert (cfg.model.preset, cfg.optim.lr, cfg.optim.batch_size, cfg.optim.epochs) == (preset, lr, batch, epochs)
    assert cfg.optim.warmup_epochs == warmup and cfg.optim.weight_decay == 0.15
    assert cfg.optim.betas == (0.9, 0.999) and cfg.optim.label_smoothing == 0.1
    assert cfg.data.fmt == dataset and cfg.data.image_size == PRESETS[preset].image_size
    assert cfg.data.randaugment == ("rand-m7-n4-mstd0.5-inc1" if dataset == "ssv2" else None)
    assert cfg.data.grayscale == (0.2 if key == ("k400", "vitb") else 0.0)
    assert plan_batch(cfg.optim, cfg.data.batch_size, 8).accumulation >= 1  # 8 GPUs divide the batch
    ds = resolve_ds_config(
        load_ds_config(REPO / "ds_configs" / f"{backbone}.json"), cfg, plan_batch(cfg.optim, cfg.data.batch_size, 8)
    )
    assert ds["train_batch_size"] == batch
    assert ds.get("fp16", {}).get("enabled") or ds.get("bf16", {}).get("enabled")


def test_batch_plan_and_ds_config_conflicts() -> None:
    cfg = load_config(None, ["optim.batch_size=64", "data.batch_size=8"])
    plan = plan_batch(cfg.optim, cfg.data.batch_size, 2)
    assert (plan.global_batch, plan.micro_batch, plan.accumulation) == (64, 8, 4)
    with pytest.raises(ValueError, match="not a multiple"):
        plan_batch(cfg.optim, 8, 3)
    ds = resolve_ds_config({"zero_optimization": {"stage": 0}}, cfg, plan)
    assert ds["gradient_accumulation_steps"] == 4 and ds["train_micro_batch_size_per_gpu"] == 8
    with pytest.raises(ValueError, match="train_batch_size"):
        resolve_ds_config({"train_batch_size": 32}, cfg, plan)
    with pytest.raises(ValueError, match="optimizer"):
        resolve_ds_config({"optimizer": {"type": "Adam"}}, cfg, plan)
    patched = load_ds_config(REPO / "ds_configs" / "cpu.json", {"bf16.enabled": True, "zero_optimization.stage": 1})
    assert patched["bf16"]["enabled"] is True and patched["zero_optimization"]["stage"] == 1


def test_warmup_cosine_schedule() -> None:
    f = warmup_cosine(total_steps=100, warmup_steps=10, min_ratio=0.1)
    lrs = np.array([f(s) for s in range(100)])
    np.testing.assert_allclose(lrs[:10], np.arange(1, 11) / 10)
    assert lrs[10] == pytest.approx(1.0) and np.all(np.diff(lrs[10:]) <= 0)
    assert f(100) == pytest.approx(0.1) and lrs[55] == pytest.approx(0.1 + 0.9 * 0.5, abs=0.02)


def test_batchnorm_fp32_statistics_under_bf16() -> None:
    torch.manual_seed(0)
    ref = torch.nn.BatchNorm3d(6)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
    bn = torch.nn.BatchNorm3d(6)
    bn.load_state_dict(ref.state_dict())
    for p in bn.parameters():  # what DeepSpeed's bf16 mode does: params cast, buffers left fp32
        p.data = p.data.to(torch.bfloat16)
    x = (torch.randn(4, 6, 3, 5, 5) * 3 + 1).to(torch.bfloat16)
    with pytest.raises(RuntimeError):
        bn(x)
    assert keep_batchnorm_fp32(bn) == 1
    y = bn(x)
    y_ref = ref(x.float())
    assert y.dtype == torch.bfloat16 and bn.running_mean.dtype == torch.float32
    torch.testing.assert_close(y.float(), y_ref, atol=0.05, rtol=0.02)
    torch.testing.assert_close(bn.running_mean, ref.running_mean, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(bn.running_var, ref.running_var, atol=1e-2, rtol=1e-3)
    y.float().square().sum().backward()
    assert bn.weight.grad.dtype == torch.bfloat16 and bn.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["side4video", "meanpool"])
def test_trainable_view_holds_exactly_the_trainable_state(kind: str) -> None:
    model = create_model("tiny", num_classes=4, kind=kind)
    view = TrainableView(model)
    assert {id(p) for p in view.parameters()} == {id(p) for p in model.trainable_parameters()}
    assert not any(k.startswith("backbone") for k in view.state_dict())
    video = torch.randn(2, 8, 3, 64, 64)
    model.eval()
    torch.testing.assert_close(view(video), model(video))


def test_classification_metrics_by_hand() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2])
    probs = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.1, 0.6, 0.3],
            [0.2, 0.5, 0.3],
            [0.1, 0.1, 0.8],
            [0.5, 0.1, 0.4],
            [0.3, 0.3, 0.4],
        ]
    )
    m = classification_metrics(labels, probs, ["a", "b", "c"])
    assert m["top1"] == pytest.approx(4 / 6) and m["top5"] == 1.0
    assert m["per_class_accuracy"] == {"a": 0.5, "b": 1.0, "c": pytest.approx(2 / 3)}
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert m["mean_class_accuracy"] == pytest.approx((0.5 + 1 + 2 / 3) / 3)


def test_predict_averages_view_probabilities() -> None:
    weight = torch.randn(5, 3)

    def forward(v: torch.Tensor) -> torch.Tensor:
        return v.mean(dim=(1, 3, 4)) @ weight.T  # (B, T, 3, H, W) -> (B, 5)

    video = torch.randn(2, 6, 4, 3, 8, 8)  # 2 videos x 6 views
    batch = {"video": video, "label": torch.tensor([1, 3]), "index": torch.tensor([7, 2])}
    idx, labels, probs = predict(forward, [batch], torch.float32)
    expected = torch.stack([forward(v).softmax(-1).mean(0) for v in video])
    assert idx.tolist() == [7, 2] and labels.tolist() == [1, 3]
    np.testing.assert_allclose(probs, expected.numpy(), rtol=1e-6)


def test_bf16_cpu_run(tmp_path: Path) -> None:
    """DeepSpeed bf16 on CPU/gloo: trainable params bf16, BatchNorm statistics fp32, loss finite."""
    synth = tmp_path / "synth"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "s4v.cli",
            "synth",
            "--out",
            str(synth),
            "--classes",
            "2",
            "--videos-per-class",
            "10",
            "--frames",
            "8",
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    out = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "launch/train.py",
            "--ds",
            "ds_configs/cpu.json",
            "ds.bf16.enabled=true",
            f"data.root={synth}",
            "data.batch_size=4",
            "data.num_workers=0",
            "optim.batch_size=4",
            "optim.epochs=1",
            "train.max_steps=3",
            "train.eval_every_epochs=0",
            "train.progress=false",
            "tracking.enabled=false",
            f"train.out_dir={out}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(np.isfinite(losses))
    state = torch.load(out / "checkpoints" / "step_00000003" / "mp_rank_00_model_states.pt", weights_only=False)
    module = state["module"]
    assert module["head.fc.weight"].dtype == torch.bfloat16
    assert module["head.bn.running_mean"].dtype == torch.float32
    assert state["s4v_position"] == {"epoch": 0, "videos": 12, "step": 3}


def test_side_network_size_overrides_are_checked_and_built() -> None:
    cfg = load_config(None, ["model.side_layers=2", "model.side_dim=128"])
    model = build_model(cfg, 3, torch.device("meta"))
    assert len(model.side.blocks) == 2 and model.side.blocks[0].fuse.down.out_features == 128
    for bad, message in (("model.side_layers=3", "does not divide the 4 layers"), ("model.side_dim=100", "multiple")):
        with pytest.raises(UserError, match=message):
            load_config(None, [bad])
    with pytest.raises(UserError, match="runs eagerly"):
        load_config(None, ["model.shard_frozen=true", "model.compile_frozen=default"])
