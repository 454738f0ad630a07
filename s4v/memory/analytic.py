"""Analytic lower bound of Side4Video's training memory: what no implementation can avoid keeping.

weights (frozen tower + side network), the side network's gradients and optimizer states, and the
activations every parameterised op must keep to produce its weight gradient: per fused layer the
frozen features Z entering Down (B T (N+1) D, in the tower's dtype), per side block the inputs of
BN3d, PW1, DW, PW2, the q / kv projections, out-proj, BN3d, fc1 and fc2 (in the compute dtype).
The accounted step sits above it by what autograd also keeps (attention outputs and log-sum-exp,
GELU inputs, casts) and by transients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from s4v.memory.step import PRECISIONS


@dataclass(frozen=True)
class SideShape:
    tower_width: int
    tower_layers: int
    tower_params: int
    num_patches: int
    side_layers: int
    side_dim: int
    side_params: int


def lower_bound(shape: SideShape, batch: int, frames: int, precision: str = "amp") -> dict[str, int]:
    p = PRECISIONS[precision]
    w = torch.empty(0, dtype=p.weights).element_size()
    compute = 2 if p.autocast is not None or p.weights != torch.float32 else 4
    master = 4 if p.master else 0
    videos = batch * frames
    n, d = shape.num_patches, shape.side_dim
    frozen_features = shape.side_layers * videos * (n + 1) * shape.tower_width * w
    # per block, in units of (tokens x d): BN + PW1 + DW + PW2 (4 N), q and kv inputs (N + 1 + N),
    # out-proj (N), BN + fc1 (2 N), fc2 (4 N): 14 N + 1
    side_inputs = shape.side_layers * videos * (14 * n + 1) * d * compute
    out = {
        "frozen_weights": shape.tower_params * w,
        "side_weights": shape.side_params * w,
        "side_grads": shape.side_params * w,
        "optimizer_states": shape.side_params * (8 + master),
        "frozen_features": frozen_features,
        "side_activations": side_inputs,
    }
    out["total"] = sum(out.values())
    return out


def side_shape(model: torch.nn.Module) -> SideShape:
    """Shape of a Side4Video classifier."""
    tower = model.backbone.shape
    side_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return SideShape(
        tower.width,
        tower.layers,
        sum(p.numel() for p in model.backbone.parameters()),
        tower.num_patches,
        len(model.side.blocks),
        model.side.dim,
        side_params,
    )
