"""The frozen tower sharded over 2 gloo ranks with FSDP2 (`model.shard_frozen`) computes what the replicated
tower computes: same weights (fingerprint), same logits and side-network gradients, from random init and
from a weights file, while each rank holds only its half of every block."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import open_clip
import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from s4v.models import BACKBONES, FrozenBackbone, SideSpec, build_clip, create_model, create_retrieval_model
from s4v.models.sharding import shard_frozen_blocks
from s4v.train.build import backbone_fingerprint

WORLD = 2


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _check_recognition(mesh, checkpoint: str | None) -> int:
    """Sharded vs replicated recognition model on this rank's half of a batch; returns the rank's block bytes."""
    models = []
    for frozen_mesh in (None, mesh):
        torch.manual_seed(0)
        models.append(
            create_model("tiny", 5, checkpoint=checkpoint, frozen_dtype=torch.bfloat16, frozen_mesh=frozen_mesh)
        )
    replicated, sharded = models
    assert backbone_fingerprint(sharded) == backbone_fingerprint(replicated)
    video = torch.randn(4, 4, 3, 64, 64, generator=torch.Generator().manual_seed(1))[mesh.get_local_rank() :: WORLD]
    outputs = [m(video) for m in models]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
    for out in outputs:
        out.float().logsumexp(-1).mean().backward()
    grads = [_grads(m) for m in models]
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=0, atol=0, msg=name)
    blocks = sharded.backbone.blocks.parameters()
    assert all(isinstance(p, DTensor) for p in blocks)
    return sum(p.to_local().numel() * p.element_size() for p in sharded.backbone.blocks.parameters())


def _check_retrieval_and_eva(mesh) -> None:
    torch.manual_seed(0)
    side = SideSpec.of_preset("tiny-retrieval", temporal_impl="reference")
    replicated = create_retrieval_model("tiny-retrieval", frozen_dtype=torch.bfloat16, side=side)
    torch.manual_seed(0)
    sharded = create_retrieval_model("tiny-retrieval", frozen_dtype=torch.bfloat16, side=side, frozen_mesh=mesh)
    text = next(p for n, p in sharded.named_parameters() if n.startswith("text."))
    assert not isinstance(text, DTensor) and text.dtype == torch.float32  # the trained text tower is not sharded
    g = torch.Generator().manual_seed(1)
    video, tokens = torch.randn(2, 4, 3, 64, 64, generator=g), torch.randint(1, 400, (2, 12), generator=g)
    tokens[:, -1] = 49407  # EOT
    torch.testing.assert_close(sharded.eval()(video, tokens), replicated.eval()(video, tokens), rtol=0, atol=0)
    towers = []
    for shard in (None, mesh):
        torch.manual_seed(0)
        clip = build_clip(
            "tiny-eva", dtype=torch.bfloat16, parts=("visual",), shard=shard and shard_frozen_blocks(shard)
        )
        towers.append(FrozenBackbone(clip.visual))
    images = torch.randn(2, 3, 64, 64, generator=g)
    torch.testing.assert_close(towers[1](images), towers[0](images), rtol=0, atol=0)


def _rank(rank: int, port: int, checkpoint: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (WORLD,))
    held = [_check_recognition(mesh, None), _check_recognition(mesh, checkpoint)]
    _check_retrieval_and_eva(mesh)
    torch.save(held, f"{out}.{rank}")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def test_sharded_tower_equals_replicated_on_two_ranks(tmp_path: Path) -> None:
    torch.manual_seed(3)
    checkpoint = tmp_path / "tiny.pt"
    torch.save(open_clip.create_model(BACKBONES["tiny"].open_clip, pretrained=None).state_dict(), checkpoint)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = str(tmp_path / "held")
    torch.multiprocessing.spawn(_rank, args=(port, str(checkpoint), out), nprocs=WORLD, join=True)
    blocks = list(create_model("tiny", 5, device="meta").backbone.blocks.parameters())
    expected = [0] * WORLD  # bf16 bytes of each rank's dim-0 chunks (torch.chunk's cut, as FSDP2 cuts)
    for p in blocks:
        for rank, chunk in enumerate(torch.chunk(p, WORLD)):
            expected[rank] += chunk.numel() * 2
    held = [torch.load(f"{out}.{rank}") for rank in range(WORLD)]
    assert [per_rank[0] for per_rank in held] == [per_rank[1] for per_rank in held] == expected
    assert sum(expected) == sum(p.numel() * 2 for p in blocks) and max(expected) < 0.51 * sum(expected)
