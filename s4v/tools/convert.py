"""`s4v convert-reference`: a checkpoint of the authors' Side4Video code as a `final/` directory.

Their tensors are renamed by `s4v.tools.reference`; the directory holds what a training run's `final/` holds
(config.yaml, meta.json, trainable.pt), so `launch/eval.py`, `s4v predict`, `s4v embed` and `s4v search` read it.
The frozen tower is rebuilt from `--tower` (config.yaml's `model.checkpoint`), never copied out of theirs.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import torch
from torch import Tensor

from s4v.config import Config, ModelConfig
from s4v.core.errors import UserError
from s4v.data.config import DataConfig
from s4v.models.architectures import PRESETS
from s4v.tools.reference import LAYOUTS, REFERENCE, Layout, convert_state, listed, regex
from s4v.train.build import backbone_fingerprint, build_model
from s4v.train.checkpoint import export_trainable
from s4v.train.precision import TrainableView

# train_vision.py's epoch_saving / best_saving keep the model under "model_state_dict"; the retrieval code
# (main_task_retrieval.py's save_model) saves the bare state dict; "state_dict" / "model": common re-saves.
WRAPPERS = ("model_state_dict", "state_dict", "model")


def read_reference(path: Path) -> dict[str, Tensor]:
    """Their state dict: bare or under one of WRAPPERS, `module.` prefixes (DDP) removed.

    Memory-mapped where the file allows it: the frozen tower in it (ViT-E: many GB) is only looked at.
    """
    if not path.is_file():
        raise UserError(f"reference checkpoint {str(path)!r}: no such file")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # files of torch < 1.6 cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, KeyError) as e:  # what torch.load raises
        reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        raise UserError(f"reference checkpoint {str(path)!r}: not a PyTorch checkpoint ({reason})") from None
    for wrapper in WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise UserError(f"reference checkpoint {str(path)!r}: holds a {type(obj).__name__}, not a state dict")
    odd = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
    if odd:
        raise UserError(listed(f"reference checkpoint {str(path)!r}: entries that are not tensors", odd))
    return {k.removeprefix("module."): v for k, v in obj.items()}


def side_size(reference: dict[str, Tensor], layout: Layout, path: Path) -> tuple[int, int]:
    """(side blocks, side width) of their checkpoint; a checkpoint of another layout fails here, by name."""
    stem = reference.get(name := layout.theirs("side.stem.*").replace("*", "weight"))
    if stem is None:
        raise UserError(
            f"{path} has no {name!r}: not a checkpoint of the authors' {layout.title} "
            f"(its first keys: {', '.join(list(reference)[:3])})"
        )
    fuse = regex(layout.theirs("side.blocks.#.fuse.down.*"))
    return len({m.group(1) for k in reference if (m := fuse.fullmatch(k))}), stem.shape[0]


def _reference_config(preset: str, tower: Path | None) -> Config:
    """The run config of a converted checkpoint; the data section is a default to override at eval time."""
    p = PRESETS[preset]
    data = DataConfig(root="data", num_frames=p.num_frames, image_size=p.image_size)
    if p.task == "retrieval":  # MSR-VTT as distributed (docs/retrieval.md)
        data = DataConfig(
            root="data/msrvtt", fmt="msrvtt", train_list="MSRVTT_train.9k.csv", val_list="MSRVTT_JSFUSION_test.csv",
            class_file="MSRVTT_data.json", num_frames=p.num_frames, image_size=p.image_size,
        )  # fmt: skip
    model = ModelConfig(task=p.task, preset=preset, checkpoint=None if tower is None else str(tower.resolve()))
    return Config(model=model, data=data)


def _class_names(path: Path | None, num_classes: int) -> list[str]:
    if path is None:
        return [str(i) for i in range(num_classes)]
    if not path.is_file():
        raise UserError(f"--classes {str(path)!r}: no such file")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != num_classes:
        raise UserError(f"--classes {str(path)!r}: {len(names)} names for the checkpoint's {num_classes} classes")
    return names


def convert_reference(
    checkpoint: Path, preset: str, out: Path, tower: Path | None = None, classes: Path | None = None
) -> list[str]:
    """Write `out` (config.yaml, meta.json, trainable.pt) from their checkpoint of `preset`'s model.

    Returns their frozen-tower keys whose values differ from `tower`'s (none are compared without it).
    """
    if preset not in PRESETS:
        raise UserError(f"--preset {preset!r}: not one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    layout = LAYOUTS.get((p.task, p.tower.block_form))
    if layout is None:
        raise UserError(f"--preset {preset!r}: the authors' {p.task} model on {p.tower.title} is not supported")
    if p.task == "retrieval" and classes is not None:
        raise UserError("--classes: a retrieval model has no classes")
    if tower is not None and not tower.is_file():
        raise UserError(f"--tower {str(tower)!r}: no such file (weights are never downloaded)")
    if (out / "meta.json").exists() or (out / "trainable.pt").exists():
        raise UserError(f"--out {str(out)!r} already holds a checkpoint; choose another directory")
    reference = read_reference(checkpoint)
    blocks, width = side_size(reference, layout, checkpoint)
    if (blocks, width) != (p.side_layers, p.side_dim):  # fails before the (ViT-E: 17 GB) model is built
        size = (p.task, p.backbone, blocks, width)
        fits = [n for n, q in PRESETS.items() if (q.task, q.backbone, q.side_layers, q.side_dim) == size]
        raise UserError(
            f"{checkpoint} has {blocks} side blocks of width {width}, preset {preset!r} has {p.side_layers} of "
            f"{p.side_dim}" + (f": use --preset {fits[0]}" if fits else "")
        )
    num_classes = 0  # retrieval: no classifier
    if p.task == "recognition":
        if "fc.weight" not in reference:
            raise UserError(f"{checkpoint} has no classifier 'fc.weight'")
        num_classes = reference["fc.weight"].shape[0]
    names = _class_names(classes, num_classes)
    cfg = _reference_config(preset, tower)
    model = build_model(cfg, max(num_classes, 1), torch.device("cpu"))  # as load_trained builds it (retrieval: no K)
    state, differ = convert_state(reference, model, compare_frozen=tower is not None)
    view = TrainableView(model)
    view.load_state_dict(state)  # strict; convert_state has filled every key
    meta = {
        "num_classes": num_classes,
        "classes": names,
        "backbone_fingerprint": backbone_fingerprint(model),
        "converted_from": str(checkpoint.resolve()),
        "reference_code": REFERENCE,
    }
    export_trainable(view, out, cfg, meta)
    return differ


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="s4v convert-reference",
        description="Import a checkpoint of the authors' Side4Video code (recognition on CLIP / ViT-E towers, "
        "retrieval on CLIP towers) as a final/ directory for launch/eval.py, s4v predict, s4v embed / search.",
    )
    p.add_argument("checkpoint", type=Path, metavar="CKPT", help="their model_best.pt, pytorch_model.bin.N, ...")
    p.add_argument("--preset", required=True, help="the preset of their model, e.g. b16, e14-light, b16-retrieval")
    p.add_argument("--out", type=Path, required=True, help="directory to write: config.yaml, meta.json, trainable.pt")
    p.add_argument("--tower", type=Path, metavar="WEIGHTS", help="the frozen tower's CLIP / EVA-CLIP weights file")
    p.add_argument("--classes", type=Path, metavar="FILE", help="class names in label order, one per line")
    args = p.parse_args(argv)
    differ = convert_reference(args.checkpoint, args.preset, args.out, args.tower, args.classes)
    print(f"wrote {args.out}")
    if args.tower is None:
        print("warning: no --tower: its config.yaml builds a random-init frozen tower (model.checkpoint: null)")
    elif differ:
        print(listed(f"warning: {len(differ)} frozen-tower tensors of CKPT differ from --tower's, used here", differ))
    return 0
