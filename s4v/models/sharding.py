"""The frozen tower sharded over the data-parallel ranks with PyTorch FSDP2 (`model.shard_frozen`).

No rank updates the frozen tower, so a full replica per rank is pure cost: ViT-E/14 in bf16 is 8.1 GiB on
every GPU. `fully_shard` on each frozen block leaves 1/N of its weights on each of N ranks; the block's
pre-forward hook all-gathers it just before it runs and, with `reshard_after_forward`, frees the gathered
copy right after, so one block (two with FSDP2's prefetch) is whole at a time, for one all-gather per block
per forward. The blocks run under no_grad, so FSDP2 never reduces a gradient: it is a weight store here,
beside the DeepSpeed engine that trains the side network (which never sees the tower, see
`s4v.train.precision.TrainableView`). Embeddings, final norm and projection (3 M of ViT-E's 4.4 B parameters)
stay replicated. Sharding is applied on the meta device, before any tensor is made real, so loading
(`build_clip(..., shard=...)`) writes each rank's slice straight from the file.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard

from s4v.models.backbone import tower_blocks


def shard_frozen_blocks(mesh: DeviceMesh) -> Callable[[nn.Module], None]:
    """A `build_clip` `shard` step: every block of the visual tower, sharded over the ranks of `mesh`."""

    def shard(clip: nn.Module) -> None:
        clip.visual.requires_grad_(False)  # frozen before FSDP2 sees it: it then registers no gradient hooks
        for block in tower_blocks(clip.visual):
            fully_shard(block, mesh=mesh, reshard_after_forward=True)

    return shard
