"""Retrieval: metrics against hand-computed examples, matching functions, the retrieval model's gradients."""

from __future__ import annotations

import open_clip
import pytest
import torch

from s4v.metrics.retrieval import ground_truth_ranks, retrieval_metrics
from s4v.models import BACKBONES, SideSpec, create_retrieval_model, symmetric_info_nce
from s4v.models.matching import Matcher, blockwise_similarity, token_wise_similarity

TINY = BACKBONES["tiny"]


def test_perfect_ranking() -> None:
    m = retrieval_metrics(torch.eye(4), torch.arange(4))
    assert m["t2v_R@1"] == 100.0 and m["v2t_R@1"] == 100.0 and m["t2v_MdR"] == 1.0 and m["t2v_MnR"] == 1.0


def test_reversed_ranking() -> None:
    # Scores decrease with column index, ground truth is the reversed diagonal: ranks 4, 3, 2, 1.
    sim = torch.tensor([[4.0, 3, 2, 1]]).repeat(4, 1)
    m = retrieval_metrics(sim, torch.tensor([3, 2, 1, 0]))
    assert m["t2v_R@1"] == 25.0 and m["t2v_R@5"] == 100.0
    assert m["t2v_MdR"] == 2.5 and m["t2v_MnR"] == 2.5


def test_ties_count_against_the_ground_truth() -> None:
    assert ground_truth_ranks(torch.zeros(3, 3), torch.eye(3, dtype=torch.bool)).tolist() == [3, 3, 3]
    sim = torch.tensor([[0.5, 0.5, 0.1], [0.9, 0.2, 0.2]])
    truth = torch.tensor([[True, False, False], [False, False, True]])
    assert ground_truth_ranks(sim, truth).tolist() == [2, 3]


def test_multiple_captions_per_video_use_the_best_caption_for_video_to_text() -> None:
    # 3 captions, 2 videos: captions 0 and 1 describe video 0, caption 2 describes video 1.
    sim = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    m = retrieval_metrics(sim, torch.tensor([0, 0, 1]))
    assert m["t2v_R@1"] == pytest.approx(200 / 3)  # caption 0 ranks its video 2nd
    assert m["v2t_R@1"] == 50.0  # video 0: best caption (1) ranks 1st; video 1: caption 0 (0.9) beats caption 2


def test_token_wise_similarity_by_hand() -> None:
    text = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])  # third token is padding
    mask = torch.tensor([[True, True, False]])
    frames = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]])
    # words: best frame 1.0 and 0.8 -> 0.9; frames: best word 1.0 and 0.8 -> 0.9
    assert token_wise_similarity(text, mask, frames).item() == pytest.approx(0.9)


def test_blockwise_equals_full_similarity() -> None:
    g = torch.Generator().manual_seed(0)
    text, frames = torch.randn(7, 5, 8, generator=g), torch.randn(9, 3, 8, generator=g)
    mask = torch.rand(7, 5, generator=g) > 0.3
    mask[:, 0] = True
    eot = torch.zeros(7, dtype=torch.long)
    for matching in ("wti", "token", "global"):
        torch.manual_seed(0)
        matcher = Matcher(matching, 8)
        full = matcher(text, mask, eot, frames)
        torch.testing.assert_close(blockwise_similarity(matcher, text, mask, eot, frames, block=2), full)


@pytest.mark.parametrize("kind", ["side4video", "meanpool"])
def test_retrieval_model_trains_text_side_head_and_matcher_only(kind: str) -> None:
    """As the reference's recipe: the image tower frozen but its final norm and projection."""
    torch.manual_seed(0)
    side = SideSpec.of_preset("tiny-retrieval", temporal_impl="reference") if kind == "side4video" else None
    model = create_retrieval_model("tiny-retrieval", kind=kind, side=side)
    tokens = open_clip.get_tokenizer(TINY.tokenizer)(["a red circle moving left", "a blue square"])
    logits = model(torch.randn(2, 4, 3, 64, 64), tokens)
    symmetric_info_nce(logits).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.visual_head.parameters())
    assert model.text.token_embedding.weight.grad is not None
    assert all(p.grad is not None for p in model.matcher.parameters())
    if kind == "side4video":
        assert model.up.weight.grad.abs().sum() > 0
    groups = model.parameter_groups(1e-7, 1e-4)
    assert sum(len(g["params"]) for g in groups) == len(model.trainable_parameters())
    assert [g["lr"] for g in groups] == [1e-7, 1e-4]


def test_retrieval_model_starts_from_clip_zero_shot_frames() -> None:
    torch.manual_seed(0)
    model = create_retrieval_model(
        "tiny-retrieval", side=SideSpec.of_preset("tiny-retrieval", temporal_impl="reference")
    ).eval()
    video = torch.randn(1, 4, 3, 64, 64)
    expected = model.backbone(video.flatten(0, 1))  # open_clip's encode_image of every frame
    torch.testing.assert_close(model.encode_video(video)[0], expected, rtol=1e-5, atol=1e-5)


def test_text_eot_token_equals_open_clip_encode_text() -> None:
    torch.manual_seed(0)
    model = create_retrieval_model("tiny-retrieval", kind="meanpool")
    clip = open_clip.create_model(TINY.open_clip)
    tokens = open_clip.get_tokenizer(TINY.tokenizer)(["a green cross appearing"])
    clip.transformer.load_state_dict(model.text.transformer.state_dict())
    clip.token_embedding.load_state_dict(model.text.token_embedding.state_dict())
    clip.ln_final.load_state_dict(model.text.ln_final.state_dict())
    with torch.no_grad():
        clip.positional_embedding.copy_(model.text.positional_embedding)
        clip.text_projection.copy_(model.text.text_projection)
        feats, mask, eot = model.text(tokens)
        torch.testing.assert_close(feats[0, eot[0]], clip.encode_text(tokens)[0], rtol=1e-5, atol=1e-5)
    assert mask.sum().item() == eot.item() + 1


def test_text_tower_accepts_captions_shorter_than_its_context() -> None:
    torch.manual_seed(0)
    model = create_retrieval_model("tiny-retrieval", kind="meanpool")
    tokens = open_clip.get_tokenizer(TINY.tokenizer)(["a red circle"])  # context 32
    feats, mask, eot = model.text(tokens)
    short, short_mask, short_eot = model.text(tokens[:, :16])
    # causal attention: the first 16 positions do not depend on what comes after them
    torch.testing.assert_close(short, feats[:, :16], rtol=1e-5, atol=1e-5)
    assert short_eot.item() == eot.item()
    with pytest.raises(ValueError, match="context length"):
        model.text(torch.zeros(1, 40, dtype=torch.long))
