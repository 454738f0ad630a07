"""`s4v info`: tunable / frozen parameters and GFLOPs per view of a preset, built on the meta device.

The meta device allocates nothing, so ViT-L/14 and ViT-E/14 presets are counted without their RAM.
GFLOPs follow the video-literature (fvcore) convention: one multiply-add counts once.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from s4v.models.architectures import PRESETS, presets_for
from s4v.models.classifier import VideoClassifier
from s4v.models.presets import create_model


def count_parameters(model: VideoClassifier) -> tuple[int, int]:
    """(tunable, frozen) parameter counts."""
    tunable = sum(p.numel() for p in model.trainable_parameters())
    return tunable, sum(p.numel() for p in model.frozen_parameters())


def gflops_per_view(model: VideoClassifier, num_frames: int, image_size: int) -> float:
    """Multiply-adds (x1e9) of one forward on one clip, counted on whatever device the model lives on."""
    device = next(model.parameters()).device
    video = torch.zeros(1, num_frames, 3, image_size, image_size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(video)
    return counter.get_total_flops() / 2e9


def describe(preset: str, num_classes: int, num_frames: int | None = None) -> dict[str, float | int | str]:
    p = PRESETS[preset]
    frames = num_frames or p.num_frames
    model = create_model(preset, num_classes, device="meta")
    tunable, frozen = count_parameters(model)
    return {
        "preset": preset,
        "backbone": p.backbone,
        "side_layers": p.side_layers,
        "side_dim": p.side_dim,
        "frames": frames,
        "tunable": tunable,
        "frozen": frozen,
        "gflops_per_view": gflops_per_view(model, frames, p.image_size),
    }


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="s4v info", description=__doc__)
    parser.add_argument("--preset", choices=sorted(presets_for("recognition")), nargs="+", default=["tiny"])
    parser.add_argument("--num-classes", type=int, default=174)
    parser.add_argument("--frames", type=int, default=None, help="frames per view (default: the preset's)")
    args = parser.parse_args(argv)
    print(
        "| preset | backbone | l x d | tunable | tunable (M) | paper TP (M) | frozen (M) | GFLOPs/view "
        "| paper GFLOPs/view |"
    )
    print("|---|---|---|---:|---|---|---|---|---|")
    for name in args.preset:
        row = describe(name, args.num_classes, args.frames)
        paper_tp = PRESETS[name].paper_tunable_m
        paper_fl = PRESETS[name].paper_gflops_per_view
        print(
            f"| {name} | {row['backbone']} | {row['side_layers']} x {row['side_dim']} | {row['tunable']:,} "
            f"| {row['tunable'] / 1e6:.2f} "
            f"| {paper_tp if paper_tp is not None else '-'} | {row['frozen'] / 1e6:.1f} "
            f"| {row['gflops_per_view']:.1f} | {f'{paper_fl:.0f}' if paper_fl else '-'} |"
        )
    return 0
