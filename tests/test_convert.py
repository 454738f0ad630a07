"""`s4v convert-reference`: state dicts in the authors' naming, written here from our models' random weights by
this file's own tables (the reverse direction of the converter's), convert back bitwise, load with
`load_trained` and give the source model's outputs; a key too many, one missing or a wrong shape is an error
that names the key (exit code 2 through the CLI)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from s4v.cli import main
from s4v.core.errors import UserError
from s4v.models import SideSpec, create_model, create_retrieval_model
from s4v.models.backbone import FrozenBackbone, build_clip
from s4v.models.classifier import Side4VideoClassifier
from s4v.tools.infer import load_trained
from s4v.tools.reference import convert_state
from s4v.train.precision import TrainableView

CPU = torch.device("cpu")
EOT = 49407  # the CLIP tokenizer's end-of-text id, its largest

# Our module inside a side block -> the authors' (their AttnCBlock of each file).
CLIP_BLOCK = {  # Recognition/clip/model.py
    "temporal.bn": "bn_1", "temporal.pw1": "conv.0", "temporal.dw": "conv.1", "temporal.pw2": "conv.2",
    "attn.norm": "ln_1", "attn.out_proj": "attn.out_proj", "mlp_bn": "bn_2", "mlp.0": "mlp.fc1", "mlp.2": "mlp.fc2",
}  # fmt: skip
EVA_BLOCK = {  # Recognition/eva_clip/eva_vit_model.py
    "temporal.bn": "bn_1", "temporal.pw1": "conv.0", "temporal.dw": "conv.1", "temporal.pw2": "conv.2",
    "attn.norm": "ln_1", "attn.out_proj": "attn.proj", "mlp_bn": "bn_2", "mlp.0": "mlp.0", "mlp.2": "mlp.2",
}  # fmt: skip
RETRIEVAL_BLOCK = {  # Retrieval/modules/module_clip.py
    "temporal.bn": "norm1", "temporal.pw1": "pw_conv1", "temporal.dw": "dw_conv1", "temporal.pw2": "pw_conv2",
    "attn.norm": "ln_1", "attn.out_proj": "attn.out_proj", "mlp_bn": "norm2", "mlp.0": "mlp.fc1", "mlp.2": "mlp.fc2",
}  # fmt: skip


def _rename(ours: dict[str, Tensor], modules: dict[str, str], tensors: dict[str, str]) -> dict[str, Tensor]:
    """Every tensor of ours under its name there: whole tensors first, else its module renamed (KeyError if neither)."""
    out = {}
    for key, value in ours.items():
        module, name = key.rsplit(".", 1)
        out[tensors[key] if key in tensors else f"{modules[module]}.{name}"] = value.clone()
    return out


def _side_names(blocks: int, side: str, block: str, table: dict[str, str], mha: bool) -> tuple[dict, dict]:
    """Their (module, tensor) names of our side network: `side` holds the stem, `block` the blocks; `mha`: their
    attention is nn.MultiheadAttention, whose packed input projection is two tensors, not a module."""
    modules = {"side.stem": f"{side}side_conv1", "side.stem_bn": f"{side}side_pre_bn3d"}
    tensors = {}
    for k in range(blocks):
        modules |= {f"side.blocks.{k}.{ours}": f"{block}.{k}.{theirs}" for ours, theirs in table.items()}
        if mha:
            tensors |= {
                f"side.blocks.{k}.attn.in_proj.{n}": f"{block}.{k}.attn.in_proj_{n}" for n in ("weight", "bias")
            }
    return modules, tensors


def _clip_side_names(blocks: int, v: str, table: dict[str, str]) -> tuple[dict, dict]:
    """Side network in a CLIP tower `v`: positions and fusion sit in `v`.transformer."""
    t = f"{v}transformer."
    modules, tensors = _side_names(blocks, v, f"{t}side_transformer", table, mha=True)
    for k in range(blocks):
        modules[f"side.blocks.{k}.fuse.norm"] = f"{t}side_lns.{k}"
        modules[f"side.blocks.{k}.fuse.down"] = f"{t}side_linears.{k}"
    return modules, tensors | {"side.pos": f"{t}side_spatial_position_embeddings"}


def clip_recognition(model: nn.Module) -> dict[str, Tensor]:
    modules, tensors = _clip_side_names(len(model.side.blocks), "visual.", CLIP_BLOCK)
    modules |= {"head.bn": "visual.side_post_bn", "head.fc": "fc"}
    tower = model.backbone.visual.state_dict().items()  # their recognition tower has no ln_post / proj
    frozen = {f"visual.{k}": v for k, v in tower if not k.startswith(("ln_post", "proj"))}
    return _rename(TrainableView(model).state_dict(), modules, tensors) | frozen


def eva_recognition(model: nn.Module) -> dict[str, Tensor]:
    ours = TrainableView(model).state_dict()
    blocks = len(model.side.blocks)
    modules, _ = _side_names(blocks, "visual.", "visual.side_blocks", EVA_BLOCK, mha=False)
    for k in range(blocks):
        modules[f"side.blocks.{k}.fuse.norm"] = f"visual.side_lns.{k}"
        modules[f"side.blocks.{k}.fuse.down"] = f"visual.side_linears.{k}"
    packed = {k: ours.pop(k) for k in list(ours) if ".attn.in_proj." in k}
    out = _rename(ours, modules | {"head.fc": "fc"}, {"side.pos": "visual.side_spatial_position_embeddings"})
    for key, value in packed.items():  # their SideAttention has separate q / k / v projections
        k, name = key.split(".")[2], key.rsplit(".", 1)[1]
        for part, chunk in zip("qkv", value.chunk(3), strict=True):
            out[f"visual.side_blocks.{k}.attn.{part}_proj.{name}"] = chunk.clone()
    return out | {f"visual.{k}": v for k, v in model.backbone.visual.trunk.state_dict().items()}


def clip_retrieval(model: nn.Module) -> dict[str, Tensor]:
    ours = TrainableView(model).state_dict()
    modules, tensors = _clip_side_names(len(model.side.blocks), "clip.visual.", RETRIEVAL_BLOCK)
    modules |= {"side_bn": "clip.visual.side_post_bn", "text.ln_final": "clip.ln_final"}
    modules |= {"text.token_embedding": "clip.token_embedding"}
    for i in (0, 2):  # WTI
        modules |= {
            f"matcher.text_weight.{i}": f"text_weight_fc.{i}",
            f"matcher.frame_weight.{i}": f"video_weight_fc.{i}",
        }
    tensors |= {
        "text.positional_embedding": "clip.positional_embedding",
        "text.text_projection": "clip.text_projection",
    }
    head = {"clip.visual.ln_post.weight": ours.pop("visual_head.norm.weight")}  # trained copies: theirs win
    head |= {"clip.visual.ln_post.bias": ours.pop("visual_head.norm.bias")}
    head |= {"clip.visual.proj": ours.pop("visual_head.proj.weight").t().contiguous()}  # used as x @ proj
    text = {k: ours.pop(k) for k in list(ours) if k.startswith("text.transformer.")}
    up, scale = ours.pop("up.weight"), ours.pop("temperature.logit_scale")
    out = _rename(ours, modules, tensors) | {f"clip.{k.removeprefix('text.')}": v.clone() for k, v in text.items()}
    out |= {"clip.visual.side_proj": up.t().contiguous(), "clip.logit_scale": scale.reshape(()).clone()}
    tower = {f"clip.visual.{k}": v for k, v in model.backbone.visual.state_dict().items()}
    return out | tower | head


def randomize(model: nn.Module, seed: int) -> None:
    """Distinct random values in every trainable tensor (BatchNorm statistics and counters included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in TrainableView(model).state_dict(keep_vars=True).items():
            if not t.is_floating_point():
                t.fill_(int(torch.randint(1, 1000, (), generator=g)))
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))


def assert_same_state(model: nn.Module, expected: dict[str, Tensor]) -> None:
    got = TrainableView(model).state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


def _s4v(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main(["convert-reference", *(str(a) for a in args)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def tower(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights of the tiny CLIP, so the source model and the converted one share their frozen tower."""
    path = tmp_path_factory.mktemp("tower") / "tiny-clip.pt"
    torch.manual_seed(1)
    torch.save(build_clip("tiny").state_dict(), path)
    return path


@pytest.fixture(scope="module")
def recognition(tower: Path) -> tuple[nn.Module, dict[str, Tensor]]:
    source = create_model("tiny", 5, checkpoint=str(tower))
    randomize(source, 0)
    return source.eval(), clip_recognition(source)


def test_recognition_converts_bitwise(
    recognition: tuple[nn.Module, dict[str, Tensor]], tower: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, reference = recognition
    ckpt = tmp_path / "model_best.pt"  # train_vision.py's best_saving, from a DDP-wrapped model
    wrapped = {f"module.{k}": v for k, v in reference.items()}
    torch.save({"epoch": 29, "model_state_dict": wrapped, "optimizer_state_dict": {}}, ckpt)
    names = [f"class {i}" for i in range(5)]
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    out = tmp_path / "final"
    code, stdout, stderr = _s4v(
        capsys, ckpt, "--preset", "tiny", "--out", out, "--tower", tower, "--classes", tmp_path / "classes.txt"
    )
    assert code == 0, stderr
    assert "warning" not in stdout
    model, cfg, meta = load_trained(out, CPU, torch.float32)
    assert (meta["num_classes"], meta["classes"], cfg.model.checkpoint) == (5, names, str(tower.resolve()))
    assert_same_state(model, TrainableView(source).state_dict())
    video = torch.randn(2, 8, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(model(video), source(video))


def test_retrieval_converts_bitwise(tower: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = create_retrieval_model("tiny-retrieval", checkpoint=str(tower))
    randomize(source, 1)
    source.eval()
    reference = clip_retrieval(source)
    reference["clip.visual.ln_pre.weight"] = reference["clip.visual.ln_pre.weight"] + 1  # not --tower's: a warning
    torch.save(reference, tmp_path / "pytorch_model.bin.4")  # main_task_retrieval.py's save_model: a bare state dict
    out = tmp_path / "final"
    code, stdout, stderr = _s4v(capsys, tmp_path / "pytorch_model.bin.4", "--preset", "tiny-retrieval", "--out", out,
                                "--tower", tower)  # fmt: skip
    assert code == 0, stderr
    assert "warning: 1 frozen-tower tensors" in stdout and "clip.visual.ln_pre.weight" in stdout
    model, cfg, meta = load_trained(out, CPU, torch.float32, task="retrieval")
    assert (meta["num_classes"], meta["classes"], cfg.model.preset) == (0, [], "tiny-retrieval")
    assert_same_state(model, TrainableView(source).state_dict())
    g = torch.Generator().manual_seed(6)
    video = torch.randn(2, 8, 3, 64, 64, generator=g)
    tokens = torch.randint(1, EOT, (3, 32), generator=g)
    for row, end in enumerate((5, 17, 31)):
        tokens[row, end], tokens[row, end + 1 :] = EOT, 0
    with torch.no_grad():
        frames, text = model.encode_video(video), model.encode_text(tokens)
        assert torch.equal(frames, source.encode_video(video))
        assert all(torch.equal(a, b) for a, b in zip(text, source.encode_text(tokens), strict=True))
        assert torch.equal(model.similarity(*text, frames), source.similarity(*text, frames))


def test_eva_post_norm_converts_bitwise() -> None:
    """No preset is a tiny EVA one: the tiny EVA tower with a post-norm side network, converted in memory."""
    torch.manual_seed(2)
    source = Side4VideoClassifier(FrozenBackbone(build_clip("tiny-eva").visual), SideSpec(64, 2, form="post"), 5)
    randomize(source, 3)
    source.eval()
    reference = eva_recognition(source)
    target = copy.deepcopy(source)
    randomize(target, 4)
    state, differ = convert_state(reference, target, compare_frozen=True)
    TrainableView(target).load_state_dict(state)
    assert differ == []
    assert_same_state(target, TrainableView(source).state_dict())
    video = torch.randn(2, 8, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert torch.equal(target(video), source(video))
    del reference["visual.side_blocks.1.attn.k_proj.bias"]
    with pytest.raises(UserError, match=r"missing: visual\.side_blocks\.1\.attn\.k_proj\.bias"):
        convert_state(reference, target)


B = "visual.transformer.side_transformer."


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("fusion_model.frame_position_embeddings.weight", torch.zeros(77, 64), "unexpected: fusion_model.frame_"),
        (f"{B}2.gate", torch.zeros(1), f"unexpected: {B}2.gate"),
        ("visual.side_conv1.scale", torch.zeros(1), "unexpected: visual.side_conv1.scale (-> side.stem.scale"),
        (f"{B}3.bn_2.running_var", None, f"missing: {B}3.bn_2.running_var"),
        ("fc.bias", torch.zeros(7), "shape mismatch: fc.bias (7,) vs head.fc.bias (5,)"),
        ("visual.positional_embedding", torch.zeros(50, 128), "shape mismatch: visual.positional_embedding (50, 128)"),
    ],
)
def test_checkpoint_that_does_not_fit_names_the_key(
    recognition: tuple[nn.Module, dict[str, Tensor]], key: str, value: Tensor | None, message: str
) -> None:
    source, reference = recognition
    edited = dict(reference)
    if value is None:
        del edited[key]
    else:
        edited[key] = value
    with pytest.raises(UserError, match=re.escape(message)):
        convert_state(edited, source)


@pytest.mark.parametrize(
    ("edit", "preset", "message"),
    [
        ("extra", "tiny", "unexpected: visual.side_extra.weight"),
        ("none", "tiny-retrieval", "has no 'clip.visual.side_conv1.weight'"),
        ("drop block 3", "tiny", "has 3 side blocks of width 64, preset 'tiny' has 4 of 64"),
        ("none", "e14-retrieval", "not supported"),
    ],
)
def test_cli_errors_exit_2(
    recognition: tuple[nn.Module, dict[str, Tensor]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    edit: str,
    preset: str,
    message: str,
) -> None:
    reference = dict(recognition[1])
    if edit == "extra":
        reference["visual.side_extra.weight"] = torch.zeros(3)
    elif edit == "drop block 3":
        reference = {k: v for k, v in reference.items() if ".3." not in k or "side" not in k}
    torch.save(reference, tmp_path / "ckpt.pt")
    code, _, stderr = _s4v(capsys, tmp_path / "ckpt.pt", "--preset", preset, "--out", tmp_path / "out")
    assert code == 2
    assert stderr.startswith("error: ") and message in stderr and stderr.count("\n") == 1
    assert not (tmp_path / "out" / "meta.json").exists()
