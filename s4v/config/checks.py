"""Checks of a built config that its field types cannot express: the preset against the task, image size
and model options (`check_preset`), the data options (`check_data`), and what a run reads from this
machine (`check_paths`). Each failure is a one-line `UserError` naming the key to change.

`load_config` runs the first two; `check_paths` is left to the entry points, as a config may describe a
machine other than the one that loads it.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from s4v.config.schema import Config
from s4v.config.typed import not_one_of
from s4v.core.choices import SideOptions
from s4v.core.errors import UserError
from s4v.data.heldout import check_heldout
from s4v.data.randaug import RandAugmentSpec
from s4v.models.architectures import BACKBONES, PRESETS


def check_preset(cfg: Config) -> None:
    """`model.preset` is a preset of `model.task`, `data.image_size` its tower's input size; model options agree."""
    name, task = cfg.model.preset, cfg.model.task
    of_task = [n for n, p in PRESETS.items() if p.task == task]
    preset = PRESETS.get(name)
    if preset is None:
        raise UserError(not_one_of("model.preset", name, of_task))
    if preset.task != task:
        # The preset of the same tower for the asked task is the likely intent ('b16' -> 'b16-retrieval').
        same_tower = [n for n in of_task if PRESETS[n].backbone == preset.backbone]
        close = difflib.get_close_matches(name, same_tower, n=1, cutoff=0.0)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(
            f"model.preset: {name!r} is a {preset.task} preset but model.task is {task!r}; "
            f"{task} presets: {', '.join(map(repr, of_task))}{hint}"
        )
    tower = BACKBONES[preset.backbone]
    if cfg.model.side_layers is not None and not tower.reads_evenly(cfg.model.side_layers):
        raise UserError(
            f"model.side_layers: {cfg.model.side_layers} does not divide the {tower.layers} layers of {name!r}'s tower"
        )
    if cfg.model.side_dim is not None and (cfg.model.side_dim < 64 or cfg.model.side_dim % 64):
        raise UserError(f"model.side_dim: {cfg.model.side_dim} is not a positive multiple of 64 (64-dim heads)")
    if cfg.model.shard_frozen and cfg.model.compile_frozen != "none":
        raise UserError(
            f"model.shard_frozen: a sharded frozen tower runs eagerly; set model.compile_frozen=none "
            f"(got {cfg.model.compile_frozen!r})"
        )
    if cfg.model.side != SideOptions() and (task != "recognition" or cfg.model.kind != "side4video"):
        # The retrieval side network is the reference's own variant (models.retrieval.RETRIEVAL_SIDE).
        raise UserError(
            f"model.side: the Table 9 variants apply to side4video recognition, not {task} {cfg.model.kind}"
        )
    if cfg.model.side_checkpoint and cfg.model.kind != "side4video":
        raise UserError(f"model.side_checkpoint: true but model.kind {cfg.model.kind!r} has no side network")
    if cfg.data.image_size != preset.image_size:
        raise UserError(
            f"data.image_size: {cfg.data.image_size} but preset {name!r} takes {preset.image_size}-pixel frames "
            f"(set data.image_size={preset.image_size})"
        )


def check_data(cfg: Config) -> None:
    """`data` values the field types cannot express: repeated sampling is a count, and recognition's only; a
    RandAugment spec parses; the held-out carve is a fraction in [0, 1) or a list, not both."""
    if cfg.data.randaugment is not None:
        try:
            RandAugmentSpec.parse(cfg.data.randaugment)
        except UserError as e:
            raise UserError(f"data.randaugment: {e}") from None
    check_heldout(cfg.data)
    repeats = cfg.data.num_repeats
    if repeats < 1:
        raise UserError(f"data.num_repeats: {repeats} is not a positive count of clips per training video")
    if repeats > 1 and cfg.model.task == "retrieval":
        # RetrievalTask.loss samples one caption per batch index, and a video's R clips share its index.
        raise UserError(
            f"data.num_repeats: {repeats} applies to recognition only (Table 12); retrieval's contrastive loss "
            "would take a video's clips, captioned alike, as each other's negatives (set data.num_repeats=1)"
        )


def check_paths(cfg: Config) -> None:
    """What a run reads from this machine exists; the entry points call it before any process group starts."""
    if not Path(cfg.data.root).is_dir():
        raise UserError(f"data.root: {cfg.data.root!r} is not a directory")
    if cfg.data.skip_list is not None and not Path(cfg.data.skip_list).is_file():
        raise UserError(f"data.skip_list: {cfg.data.skip_list!r} is not a file (`s4v data check` writes one)")
    if cfg.data.heldout_list is not None and not Path(cfg.data.heldout_list).is_file():
        raise UserError(f"data.heldout_list: {cfg.data.heldout_list!r} is not a file")
    if cfg.data.video_index is not None and not Path(cfg.data.video_index).is_file():
        raise UserError(f"data.video_index: {cfg.data.video_index!r} is not a file (`s4v data check` writes one)")
    if cfg.model.checkpoint is not None and not Path(cfg.model.checkpoint).is_file():
        raise UserError(
            f"model.checkpoint: {cfg.model.checkpoint!r} is not a file (weights are never downloaded; "
            "pass a local file, or null for a random-init tower)"
        )
