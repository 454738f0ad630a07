"""The layouts of the authors' Side4Video checkpoints, and their mapping onto our models' trainable state.

The authors' code (github.com/HJYao00/Side4Video, commit 5d72352) saves whole models: frozen tower, side
network and heads under its own module names. The rule tables below rename every side-network and head
tensor to ours. The frozen image tower is never stored by us (a run's `model.checkpoint` rebuilds it), so its
tensors are only checked for shape against our tower: CLIP towers name them as open_clip does, EVA towers are
compared after timm's renaming of BAAI's layout (which drops rotary-embedding buffers: the tower recomputes
them). Any other key of theirs, any tensor of ours left unfilled and any shape that differs is a UserError
naming the keys.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from timm.models.eva import checkpoint_filter_fn as eva_filter
from torch import Tensor, nn

from s4v.core.errors import UserError
from s4v.models.retrieval import VideoTextRetrieval
from s4v.train.precision import TrainableView

REFERENCE = "HJYao00/Side4Video@5d72352"
SHOWN = 8  # keys named per kind of error


@dataclass(frozen=True)
class Rule:
    """Their key pattern -> ours: '#' a side-block index, '*' one name segment, '**' the rest of the key."""

    theirs: str
    ours: str
    part: int | None = None  # slice of our packed tensor (ViT-E's separate q / k / v -> one in_proj)
    fn: Callable[[Tensor], Tensor] | None = None


def _block(theirs: str, modules: dict[str, str], tensors: dict[str, str] | None = None) -> list[Rule]:
    """Rules of one side block: whole modules (their tensor names kept) and single tensors."""
    ours = "side.blocks.#."
    rules = [Rule(f"{theirs}{a}.*", f"{ours}{b}.*") for a, b in modules.items()]
    return rules + [Rule(f"{theirs}{a}", f"{ours}{b}") for a, b in (tensors or {}).items()]


# nn.MultiheadAttention's packed input projection is a pair of tensors, ours a Linear.
MHA = {"attn.in_proj_weight": "attn.in_proj.weight", "attn.in_proj_bias": "attn.in_proj.bias"}
# AttnCBlock of Recognition/clip/model.py and Recognition/eva_clip/eva_vit_model.py: the temporal conv is
# `conv` = (1x1x1, depthwise 3x1x1, 1x1x1); the two files differ in where their norms sit (our `form`).
CONV = {"bn_1": "temporal.bn", "conv.0": "temporal.pw1", "conv.1": "temporal.dw", "conv.2": "temporal.pw2"}


@dataclass(frozen=True)
class Layout:
    """How one of the authors' models names its tensors; `frozen` prefixes its frozen image tower."""

    title: str
    rules: tuple[Rule, ...]
    frozen: str

    def theirs(self, ours: str) -> str:
        """Their pattern of one of our patterns (e.g. "side.stem.*")."""
        return next(r.theirs for r in self.rules if r.ours == ours)


def _clip_side(v: str) -> list[Rule]:
    """Stem, positions and fusion of the side network in a CLIP tower `v` (model.py / module_clip.py)."""
    return [
        Rule(f"{v}side_conv1.*", "side.stem.*"),
        Rule(f"{v}side_pre_bn3d.*", "side.stem_bn.*"),
        Rule(f"{v}transformer.side_spatial_position_embeddings", "side.pos"),  # retrieval: N + 1 rows, [CLS] first
        # Their Transformer.forward fuses side_linears[k](side_lns[k](x)): our pre-norm fuse.down(fuse.norm(x)).
        Rule(f"{v}transformer.side_lns.#.*", "side.blocks.#.fuse.norm.*"),
        Rule(f"{v}transformer.side_linears.#.*", "side.blocks.#.fuse.down.*"),
    ]


CLIP_RECOGNITION = Layout(
    "recognition model on a CLIP tower (Recognition/clip/model.py in train_vision.py's VideoCLIP)",
    (
        *_clip_side("visual."),
        *_block(
            "visual.transformer.side_transformer.#.",
            CONV | {"ln_1": "attn.norm", "attn.out_proj": "attn.out_proj", "bn_2": "mlp_bn"}
            | {"mlp.fc1": "mlp.0", "mlp.fc2": "mlp.2"},
            MHA,
        ),
        Rule("visual.side_post_bn.*", "head.bn.*"),  # BN3d on the last side output, before the mean
        Rule("fc.*", "head.fc.*"),
    ),
    "visual.",
)  # fmt: skip

EVA_RECOGNITION = Layout(
    "recognition model on ViT-E (Recognition/eva_clip/eva_vit_model.py in train_vision.py's VideoCLIP)",
    (
        Rule("visual.side_conv1.*", "side.stem.*"),
        Rule("visual.side_pre_bn3d.*", "side.stem_bn.*"),
        Rule("visual.side_spatial_position_embeddings", "side.pos"),
        # forward_features fuses side_lns[k](side_linears[k](x)): our post-norm fuse.norm(fuse.down(x)).
        Rule("visual.side_linears.#.*", "side.blocks.#.fuse.down.*"),
        Rule("visual.side_lns.#.*", "side.blocks.#.fuse.norm.*"),
        *_block(
            "visual.side_blocks.#.",
            CONV | {"ln_1": "attn.norm", "attn.proj": "attn.out_proj", "bn_2": "mlp_bn", "mlp.0": "mlp.0"}
            | {"mlp.2": "mlp.2"},
        ),
        # SideAttention's q_proj / k_proj / v_proj, packed in q, k, v order as ClsShiftAttention splits them.
        *(Rule(f"visual.side_blocks.#.attn.{n}_proj.*", "side.blocks.#.attn.in_proj.*", part=i) for i, n in
          enumerate("qkv")),
        Rule("fc.*", "head.fc.*"),  # no side_post_bn: the post-norm blocks end in a BatchNorm
    ),
    "visual.",
)  # fmt: skip

CLIP_RETRIEVAL = Layout(
    "retrieval model on a CLIP tower (Retrieval/modules/module_clip.py in modeling.py's CLIP4Clip)",
    (
        *_clip_side("clip.visual."),
        *_block(
            "clip.visual.transformer.side_transformer.#.",
            {"norm1": "temporal.bn", "pw_conv1": "temporal.pw1", "dw_conv1": "temporal.dw"}
            | {"pw_conv2": "temporal.pw2", "ln_1": "attn.norm", "attn.out_proj": "attn.out_proj"}
            | {"norm2": "mlp_bn", "mlp.fc1": "mlp.0", "mlp.fc2": "mlp.2"},
            MHA,
        ),
        Rule("clip.visual.side_post_bn.*", "side_bn.*"),
        # The tower's final norm and projection are trained by the authors' recipe (main_task_retrieval.py's
        # freeze_layer_num loop): ours are copies outside the frozen tower. proj is used as x @ proj: (D, E).
        Rule("clip.visual.ln_post.*", "visual_head.norm.*"),
        Rule("clip.visual.proj", "visual_head.proj.weight", fn=lambda t: t.t()),
        Rule("clip.visual.side_proj", "up.weight", fn=lambda t: t.t()),  # used as x @ side_proj: (d, D)
        Rule("clip.token_embedding.*", "text.token_embedding.*"),
        Rule("clip.positional_embedding", "text.positional_embedding"),
        Rule("clip.transformer.**", "text.transformer.**"),
        Rule("clip.ln_final.*", "text.ln_final.*"),
        Rule("clip.text_projection", "text.text_projection"),
        Rule("clip.logit_scale", "temperature.logit_scale", fn=lambda t: t.reshape(1)),  # a scalar there
        Rule("text_weight_fc.*.*", "matcher.text_weight.*.*"),  # WTI's word and frame weights
        Rule("video_weight_fc.*.*", "matcher.frame_weight.*.*"),
    ),
    "clip.visual.",
)

# (task, block form of the tower): the authors' EVA retrieval model (Retrieval/eva_clip/) is not covered.
LAYOUTS = {
    ("recognition", "pre"): CLIP_RECOGNITION,
    ("recognition", "post"): EVA_RECOGNITION,
    ("retrieval", "pre"): CLIP_RETRIEVAL,
}

_WILDCARD = re.compile(r"\\#|\\\*\\\*|\\\*")
_GROUP = {r"\#": r"(\d+)", r"\*\*": r"(.+)", r"\*": r"([^.]+)"}


@functools.cache
def regex(pattern: str) -> re.Pattern[str]:
    return re.compile(_WILDCARD.sub(lambda m: _GROUP[m.group()], re.escape(pattern)))


def _fill(pattern: str, groups: tuple[str, ...]) -> str:
    values = iter(groups)
    return re.sub(r"#|\*\*|\*", lambda _: next(values), pattern)


def _translate(rules: tuple[Rule, ...], key: str, to_ours: bool) -> list[tuple[Rule, str]]:
    """(rule, translated key) of every rule matching `key`, from their names to ours or back."""
    hits = []
    for rule in rules:
        src, dst = (rule.theirs, rule.ours) if to_ours else (rule.ours, rule.theirs)
        if m := regex(src).fullmatch(key):
            hits.append((rule, _fill(dst, m.groups())))
    return hits


def layout_of(model: nn.Module) -> Layout:
    task = "retrieval" if isinstance(model, VideoTextRetrieval) else "recognition"
    form = "post" if model.backbone.is_eva else "pre"
    if (task, form) not in LAYOUTS:
        raise UserError(f"no layout of the authors' code maps onto a {task} model on an EVA tower")
    return LAYOUTS[task, form]


def _frozen_state(layout: Layout, frozen: dict[str, Tensor], model: nn.Module) -> tuple[dict, dict]:
    """Their frozen-tower tensors under our tower's names, and our tower's state."""
    if model.backbone.is_eva:
        trunk = model.backbone.visual.trunk
        return eva_filter(frozen, trunk), trunk.state_dict()
    return {k.removeprefix(layout.frozen): v for k, v in frozen.items()}, model.backbone.visual.state_dict()


def listed(label: str, items: list[str]) -> str:
    more = f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else ""
    return f"{label}: {', '.join(items[:SHOWN])}{more}"


def convert_state(
    reference: dict[str, Tensor], model: nn.Module, compare_frozen: bool = False
) -> tuple[dict[str, Tensor], list[str]]:
    """Our trainable state (TrainableView names) from their state dict, strictly; and, if `compare_frozen`,
    their frozen-tower keys whose values differ from `model`'s tower."""
    layout = layout_of(model)
    wanted = TrainableView(model).state_dict()
    state: dict[str, Tensor] = {}
    parts: dict[str, dict[int, Tensor]] = {}
    frozen: dict[str, Tensor] = {}
    unexpected, shapes = [], []
    for key, value in reference.items():
        hits = _translate(layout.rules, key, to_ours=True)
        if not hits:
            if key.startswith(layout.frozen):
                frozen[key] = value
            else:
                unexpected.append(key)
            continue
        rule, ours = hits[0]
        if ours not in wanted:
            unexpected.append(f"{key} (-> {ours}, not in our model)")
            continue
        value = rule.fn(value) if rule.fn else value
        value = value.float() if value.is_floating_point() else value
        shape = wanted[ours].shape
        if rule.part is not None:
            shape = torch.Size([shape[0] // 3, *shape[1:]])
        if value.shape != shape:
            shapes.append(f"{key} {tuple(value.shape)} vs {ours} {tuple(shape)}")
        elif rule.part is None:
            state[ours] = value
        else:
            parts.setdefault(ours, {})[rule.part] = value
    for ours, got in parts.items():
        if len(got) == 3:
            state[ours] = torch.cat([got[i] for i in range(3)])
    missing = []
    for ours in (k for k in wanted if k not in state):  # sources present but refused: already shape errors
        candidates = [theirs for _, theirs in _translate(layout.rules, ours, to_ours=False)]
        absent = [k for k in candidates if k not in reference]
        if absent or not candidates:
            missing += absent or [f"{ours} (no rule fills it)"]
    theirs_frozen, tower = _frozen_state(layout, frozen, model)
    differ = []
    for key, value in theirs_frozen.items():
        name = layout.frozen + key
        if key not in tower:
            unexpected.append(name)
        elif value.shape != tower[key].shape:
            shapes.append(f"{name} {tuple(value.shape)} vs our tower's {tuple(tower[key].shape)}")
        elif compare_frozen and not torch.equal(value.to(tower[key].dtype), tower[key]):
            differ.append(name)
    if unexpected or missing or shapes:
        lines = [f"checkpoint does not fit the authors' {layout.title} as our model builds it:"]
        for label, items in (("unexpected", unexpected), ("missing", missing), ("shape mismatch", shapes)):
            if items:
                lines.append(listed(label, items))
        raise UserError("\n".join(lines))
    return state, differ
