"""Exact count of the activation bytes autograd keeps for backward: the figure the fused path lowers."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor


def saved_activation_bytes(step: Callable[[], Tensor], parameters: Iterable[Tensor] = ()) -> int:
    """Bytes of the distinct storages saved for backward while `step()` runs its forward.

    Storages are deduplicated (views of one tensor count once) and those of `parameters` are left
    out: weights live for the whole run anyway, activations are what grows with the batch.
    The returned graph is freed before returning.
    """
    skip = {p.untyped_storage().data_ptr() for p in parameters}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = step()
    del out
    return sum(seen.values())
