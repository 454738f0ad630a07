"""Two views of a training step's memory, both exact on meta tensors.

`SavedTensors` records every tensor autograd keeps for backward (saved-tensor hooks), counted
once per storage: views, re-saves and the same tensor saved by two ops are not double counted.
`LiveMemory` replays the caching allocator's bookkeeping: every storage an op creates is
allocated (rounded to the allocator's 512-byte blocks) and freed when its last reference dies,
so its peak is what `torch.cuda.max_memory_allocated` reports for the same sequence of ops.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

BLOCK = 512  # CUDA caching allocator rounds every allocation up to a multiple of 512 bytes


def block_bytes(nbytes: int) -> int:
    return -(-nbytes // BLOCK) * BLOCK


class SavedTensors:
    """Context manager: bytes autograd saves for backward, deduplicated by storage.

    Storages listed in `exclude` (parameters, buffers: counted as weights elsewhere) are skipped.
    """

    def __init__(self, exclude: list[Tensor] | tuple[Tensor, ...] = ()) -> None:
        self._exclude = {StorageWeakRef(t.untyped_storage()) for t in exclude}
        self._seen: dict[StorageWeakRef, int] = {}
        self._keep: list[Any] = []  # storages stay referenced so a key can never be reused by a new storage
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        key = StorageWeakRef(storage)
        if key not in self._exclude and key not in self._seen:
            self._seen[key] = storage.nbytes()
            self._keep.append(storage)
        return t

    @staticmethod
    def _unpack(t: Tensor) -> Tensor:
        return t

    @property
    def nbytes(self) -> int:
        return sum(self._seen.values())

    @property
    def count(self) -> int:
        return len(self._seen)

    def __enter__(self) -> SavedTensors:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)
        self._keep.clear()


class LiveMemory(TorchDispatchMode):
    """Allocator replay: live and peak bytes over every op run under the mode (any device, meta too)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[StorageWeakRef, weakref.ref] = {}

    def track(self, *tensors: Tensor) -> None:
        """Count already existing tensors (weights, optimizer states, inputs) as allocated."""
        for t in tensors:
            if isinstance(t, Tensor):
                self._add(t.untyped_storage())

    def ignore(self, *tensors: Tensor) -> None:
        """Existing tensors this replay does not hold (a sharded rank's full weights: their shards are
        allocated instead): never counted, also not when an op returns a view of them."""
        for t in tensors:
            self._add(t.untyped_storage(), counted=False)

    def reset_peak(self) -> None:
        self.peak = self.live

    def _add(self, storage: Any, counted: bool = True) -> None:
        key = StorageWeakRef(storage)
        if key in self._refs and not key.expired():
            return
        nbytes = block_bytes(storage.nbytes()) if counted else 0
        self._refs[key] = weakref.ref(storage, lambda _ref, k=key, n=nbytes: self._free(k, n))
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def _free(self, key: StorageWeakRef, nbytes: int) -> None:
        if self._refs.pop(key, None) is not None:
            self.live -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, Tensor):
                self._add(t.untyped_storage())
        return out


def saved_activation_bytes(step: Callable[[], Tensor], parameters: Iterable[Tensor] = ()) -> int:
    """Bytes autograd keeps for backward while `step()` runs its forward (weights in `parameters` left out).

    The graph `step()` returns is freed before returning: only the count survives.
    """
    with SavedTensors(tuple(parameters)) as saved:
        out = step()
        del out
    return saved.nbytes
