"""The authors' model as their code computes it: ViT-E post-norm side block and fusion, the retrieval head
(eq. 4), WTI matching, the logit-scale clamp and negatives gathered over data-parallel ranks.

Expected values are written out with plain tensor operations (or by hand), not with the modules under test.
"""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from s4v.memory.tracker import SavedTensors
from s4v.models import SideSpec, create_model, create_retrieval_model, symmetric_info_nce
from s4v.models.fusion import DownNorm
from s4v.models.matching import Matcher, wti_similarity
from s4v.models.retrieval import MAX_LOGIT_SCALE, Temperature
from s4v.models.side import SideBlock, shift_cls
from s4v.train.distributed import gather_with_grad
from s4v.train.optimizer import clamp_parameter

# The tiny retrieval preset's side network, on the eager temporal branch the reference code computes.
REFERENCE_KERNELS = SideSpec.of_preset("tiny-retrieval", temporal_impl="reference")


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def _batch_norm_train(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Channels last; statistics over every other axis, biased variance (training-mode BatchNorm)."""
    flat = x.reshape(-1, x.shape[-1])
    mean, var = flat.mean(0), flat.var(0, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def test_e14_light_has_the_reference_parameter_count() -> None:
    model = create_model("e14-light", num_classes=174, device="meta")
    assert sum(p.numel() for p in model.trainable_parameters()) == 183_373_806
    assert model.head.bn is None  # the post-norm side network ends in a BatchNorm already


def test_post_norm_side_block_branch_by_branch() -> None:
    torch.manual_seed(0)
    b, t, n, d, width = 2, 3, 4, 64, 32
    block = SideBlock(d, width, temporal_impl="reference", form="post").train()
    with torch.no_grad():
        for p in block.parameters():  # away from the identity initialisations, so every term counts
            p.add_(0.1 * torch.randn_like(p))
    s, frozen, pos = torch.randn(b, t, n, d), torch.randn(b * t, n + 1, width), torch.randn(n, d)
    out = block(s, frozen, pos)

    # fusion: LayerNorm over d after Down
    z = _layer_norm(
        frozen @ block.fuse.down.weight.t() + block.fuse.down.bias, block.fuse.norm.weight, block.fuse.norm.bias
    )
    z = z.view(b, t, n + 1, d)
    s1 = 0.5 * s + 0.5 * z[:, :, 1:]
    # s + BN(PW2(DW(PW1(s)))): the depthwise kernel runs over time with zero padding
    tc = block.temporal
    y = s1 @ tc.pw1.weight.flatten(1).t() + tc.pw1.bias
    k = tc.dw.weight.view(d, 3)
    padded = F.pad(y, (0, 0, 0, 0, 1, 1))
    y = sum(padded[:, i : i + t] * k[:, i] for i in range(3)) + tc.dw.bias
    y = y @ tc.pw2.weight.flatten(1).t() + tc.pw2.bias
    s2 = s1 + _batch_norm_train(y, tc.bn.weight, tc.bn.bias)
    # s + LN(Proj(Attn(q = patches, k = v = [shifted cls ; s + pos]))), no LayerNorm before the attention
    a = block.attn
    x = torch.cat([shift_cls(z[:, :, 0]).unsqueeze(2), s2 + pos], dim=2)
    wq, wk, wv = a.in_proj.weight.split(d)
    bq, bk, bv = a.in_proj.bias.split(d)
    q, key, v = x[:, :, 1:] @ wq.t() + bq, x @ wk.t() + bk, x @ wv.t() + bv
    att = torch.softmax(q @ key.transpose(-1, -2) / math.sqrt(d), dim=-1) @ v  # d // 64 = 1 head
    s3 = s2 + _layer_norm(att @ a.out_proj.weight.t() + a.out_proj.bias, a.norm.weight, a.norm.bias)
    # s + BN(MLP(s))
    h = F.gelu(s3 @ block.mlp[0].weight.t() + block.mlp[0].bias) @ block.mlp[2].weight.t() + block.mlp[2].bias
    expected = s3 + _batch_norm_train(h, block.mlp_bn.weight, block.mlp_bn.bias)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_vit_e_fusion_equals_eager_and_keeps_only_the_frozen_input() -> None:
    torch.manual_seed(0)
    fuse = DownNorm(48, 16)
    with torch.no_grad():
        fuse.norm.weight.add_(torch.randn(16))
        fuse.norm.bias.add_(torch.randn(16))
    z = torch.randn(5, 7, 48)
    out = fuse(z)
    torch.testing.assert_close(out, fuse.norm(fuse.down(z)), rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, list(fuse.parameters()), grad)
    eager = torch.autograd.grad(fuse.eager(z), list(fuse.parameters()), grad)
    for g_ours, g_eager in zip(ours, eager, strict=True):
        torch.testing.assert_close(g_ours, g_eager, rtol=1e-4, atol=1e-5)
    with SavedTensors(list(fuse.parameters())) as saved:
        fuse(z)
    assert saved.nbytes == z.nbytes + 2 * 5 * 7 * 4  # Z, and a mean and rstd per token
    with SavedTensors(list(fuse.parameters())) as saved_eager:
        fuse.eager(z)
    assert saved_eager.nbytes > z.nbytes + 5 * 7 * 16 * 4  # eager also keeps the Down output


def test_retrieval_head_is_eq4_as_the_reference_computes_it() -> None:
    torch.manual_seed(0)
    model = create_retrieval_model("tiny-retrieval", side=REFERENCE_KERNELS)
    assert model.up.bias is None and model.up.weight.abs().sum() == 0  # bias-free, starts at zero
    assert model.side.pos.shape[0] == model.backbone.shape.num_patches + 1  # a row for the shifted [CLS]
    with torch.no_grad():
        model.up.weight.normal_()
        model.side_bn.running_mean.normal_()
        model.side_bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    video = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        s, x = model.side(video, model.backbone)
        bn = model.side_bn
        s_bn = (s - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        summed = x[:, 0] + (s_bn.mean(2) @ model.up.weight.t()).flatten(0, 1)  # before ln_post
        visual = model.backbone.visual
        expected = F.layer_norm(summed, summed.shape[-1:], visual.ln_post.weight, visual.ln_post.bias) @ visual.proj
        torch.testing.assert_close(model.encode_video(video), expected.view(2, 4, -1), rtol=1e-5, atol=1e-5)


def test_wti_by_hand_with_a_padded_word() -> None:
    text = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]])  # third word is padding
    mask = torch.tensor([[True, True, False]])
    frames = torch.tensor([[[1.0, 0.0], [-0.6, -0.8]]])
    words, frame_w = torch.tensor([[0.25, 0.75, 0.0]]), torch.tensor([[0.5, 0.5]])
    # word -> best frame: 1 and 0 (weights 0.25, 0.75) = 0.25; frame -> best word: 1, and for the second
    # frame the padded word's 0 beats -0.6 and -0.8 (the reference multiplies padding to 0) = 0.5
    assert wti_similarity(text, mask, frames, words, frame_w).item() == pytest.approx(0.375)


def test_wti_weights_ignore_padding_and_score_both_directions() -> None:
    torch.manual_seed(0)
    matcher = Matcher("wti", 8)
    text, frames = torch.randn(3, 5, 8), torch.randn(4, 6, 8)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True, False, False, False, False]])
    eot = mask.sum(1) - 1
    sim = matcher(text, mask, eot, frames)
    other = text.clone()
    other[~mask] = torch.randn(int((~mask).sum()), 8)  # what the padded positions hold must not matter
    torch.testing.assert_close(matcher(other, mask, eot, frames), sim)
    tn, fn = F.normalize(text, dim=-1), F.normalize(frames, dim=-1)
    w_t = matcher.text_weight(text).squeeze(-1).masked_fill(~mask, float("-inf")).softmax(-1)
    w_f = matcher.frame_weight(frames).squeeze(-1).softmax(-1)
    pair = torch.einsum("le,te->lt", tn[1], fn[2]) * mask[1, :, None]
    expected = 0.5 * ((pair.amax(1) * w_t[1]).sum() + (pair.amax(0) * w_f[2]).sum())
    torch.testing.assert_close(sim[1, 2], expected)


def test_logit_scale_learns_at_clip_value_and_is_clamped_after_the_step() -> None:
    temperature = Temperature(torch.tensor(math.log(100)))
    temperature(torch.tensor([0.3])).sum().backward()
    assert temperature.logit_scale.grad.item() == pytest.approx(30.0, rel=1e-5)  # d/ds e^s * 0.3 at e^s = 100
    with torch.no_grad():
        temperature.logit_scale.fill_(5.0)
    clamp_parameter(temperature.logit_scale, MAX_LOGIT_SCALE)
    assert temperature.logit_scale.item() == pytest.approx(math.log(100))
    with torch.no_grad():
        temperature.logit_scale.fill_(2.0)
    clamp_parameter(temperature.logit_scale, MAX_LOGIT_SCALE)
    assert temperature.logit_scale.item() == 2.0


def _retrieval_loss_and_grads(rank: int, world: int) -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = create_retrieval_model("tiny-retrieval", side=REFERENCE_KERNELS).eval()  # eval: BatchNorm
    model.feature_gather = gather_with_grad  # statistics per rank would differ from one process's otherwise
    g = torch.Generator().manual_seed(1)
    video, tokens = torch.randn(4, 4, 3, 64, 64, generator=g), torch.randint(1, 400, (4, 12), generator=g)
    tokens[:, -1] = 49407  # EOT
    share = slice(rank * 4 // world, (rank + 1) * 4 // world)
    loss = symmetric_info_nce(model(video[share], tokens[share]))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    if world > 1:
        for grad in grads.values():  # what DeepSpeed does with the data-parallel gradients: their mean
            torch.distributed.all_reduce(grad)
            grad /= world
    return loss.item(), grads


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    loss, grads = _retrieval_loss_and_grads(rank, world)
    if rank == 0:
        torch.save((loss, grads), out)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def test_two_ranks_contrast_the_global_batch_like_one_process(tmp_path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = str(tmp_path / "rank0.pt")
    torch.multiprocessing.spawn(_rank, args=(2, port, out), nprocs=2, join=True)
    loss2, grads2 = torch.load(out)
    loss1, grads1 = _retrieval_loss_and_grads(0, 1)
    assert loss2 == pytest.approx(loss1, rel=1e-5)
    assert grads1.keys() == grads2.keys() and len(grads1) > 20
    for name, grad in grads1.items():
        torch.testing.assert_close(grads2[name], grad, rtol=1e-4, atol=1e-6, msg=name)
