"""Deferred construction: build a model on the meta device, then make its tensors real one at a time.

A model is built on the meta device while every initialisation op is recorded per tensor storage. Random ops
run once on a scratch tensor of the same shape on the target device, so the generator advances exactly as an
eager build would (later random draws, e.g. the side network's init, are unchanged); each storage keeps its
recipe from its last full overwrite on. Replaying a recipe computes one tensor in the recorded dtype with the
generator state of that moment: bit-identical to an eager build, at the memory cost of one tensor instead of
the whole model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
_RANDOM_FILLS = {
    aten.uniform_.default,
    aten.normal_.default,
    aten.bernoulli_.float,
    aten.random_.default,
    getattr(aten.random_, "from"),
    aten.random_.to,
    aten.exponential_.default,
    aten.log_normal_.default,
    aten.cauchy_.default,
    aten.geometric_.default,
}
_FILLS = {aten.zero_.default, aten.fill_.Scalar}
_RANDOM_FACTORIES = {
    aten.randn.default,
    aten.rand.default,
    aten.randint.default,
    aten.randint.low,
    aten.randperm.default,
}
_SELF = object()  # the recipe's own tensor in a recorded op's arguments


class Unreplayable(RuntimeError):
    """An initialisation op the recorder cannot replay tensor by tensor."""


@dataclass(frozen=True)
class _Step:
    func: object
    args: tuple
    kwargs: dict
    view: tuple[int, ...] | None  # shape the op saw its own tensor with; None for factories
    inplace: bool
    rng_state: Tensor | None


def _storage_key(t: Tensor) -> int:
    return t.untyped_storage()._cdata


def _whole(t: Tensor) -> bool:
    """`t` covers its storage, in storage order."""
    return (
        t.storage_offset() == 0 and t.is_contiguous() and t.numel() * t.element_size() == t.untyped_storage().nbytes()
    )


class InitRecorder(TorchDispatchMode):
    """Records, per tensor storage, the ops that initialise a model built on the meta device."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.generator = (
            torch.default_generator
            if device.type == "cpu"
            else torch.cuda.default_generators[
                device.index if device.index is not None else torch.cuda.current_device()
            ]
        )
        self.recipes: dict[int, list[_Step]] = {}
        self._alive: list[Tensor] = []  # keeps recorded storages alive, so their keys are never reused
        self._buffers: dict[torch.dtype, Tensor] = {}

    def __exit__(self, *exc: object) -> None:
        self._buffers.clear()  # the build is recorded: scratch is not needed for replay
        super().__exit__(*exc)

    def _scratch(self, shape: torch.Size, dtype: torch.dtype) -> Tensor:
        """A tensor of `shape` for a random fill whose values are thrown away: one buffer per dtype, grown to
        the largest tensor, reused. A fresh allocation per tensor left ~2.4 GiB of freed heap in the process
        after a ViT-E build (glibc keeps mid-sized freed blocks), 20 % of what the whole load needs."""
        numel = shape.numel()
        buffer = self._buffers.get(dtype)
        if buffer is None or buffer.numel() < numel:
            self._buffers[dtype] = buffer = torch.empty(numel, dtype=dtype, device=self.device)
        return buffer[:numel].view(shape)

    def _device_kwargs(self, kwargs: dict) -> dict:
        return kwargs | ({"device": self.device} if "device" in kwargs else {})

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        schema = func._schema
        first = schema.arguments[0].alias_info if schema.arguments else None
        inplace = first is not None and first.is_write
        returns_alias = bool(schema.returns) and schema.returns[0].alias_info is not None
        if returns_alias and not inplace:
            return out  # a view: shares its input's storage and recipe
        metas = [a for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, Tensor) and a.is_meta]
        if kwargs.get("generator") is not None:
            raise Unreplayable(f"{func} with an explicit generator")
        if not metas:  # a factory
            if not isinstance(out, Tensor) or not out.is_meta:
                return out
            state = None
            if func in _RANDOM_FACTORIES:
                state = self.generator.get_state()
                func(*args, **self._device_kwargs(kwargs))  # advances the generator as an eager build does
            self.recipes[_storage_key(out)] = [_Step(func, args, kwargs, None, False, state)]
            self._alive.append(out)
            return out
        this = args[0] if inplace else metas[0]
        if len(metas) != 1 or metas[0] is not this and _storage_key(metas[0]) != _storage_key(this):
            raise Unreplayable(f"{func} reads more than one recorded tensor")
        if not _whole(this):
            raise Unreplayable(f"{func} on part of a tensor")
        key = _storage_key(this)
        if key not in self.recipes:
            raise Unreplayable(f"{func} on a tensor of unknown origin")
        template = pytree.tree_map(lambda a: _SELF if isinstance(a, Tensor) and a.is_meta else a, (args, kwargs))
        state = None
        if func in _RANDOM_FILLS:
            state = self.generator.get_state()
            func(self._scratch(this.shape, this.dtype), *args[1:], **kwargs)
        step = _Step(func, template[0], template[1], tuple(this.shape), inplace, state)
        if inplace:
            if func in _RANDOM_FILLS or func in _FILLS:  # a full overwrite: what came before no longer matters
                numel = this.untyped_storage().nbytes() // this.element_size()
                empty = _Step(
                    aten.empty.memory_format,
                    ([numel],),
                    {"dtype": this.dtype, "device": this.device},
                    None,
                    False,
                    None,
                )
                self.recipes[key] = [empty, step]
            else:
                self.recipes[key].append(step)
            return out
        if not isinstance(out, Tensor) or not _whole(out) or _storage_key(out) == key:
            raise Unreplayable(f"{func}: output not a fresh tensor")
        self.recipes[_storage_key(out)] = [*self.recipes[key], step]
        self._alive.append(out)
        return out

    def recipe(self, t: Tensor) -> Recipe:
        """How to compute the recorded meta tensor `t`; taken before the model is changed (cast, sharded)."""
        key = _storage_key(t)
        if key not in self.recipes or not _whole(t):
            raise Unreplayable("a tensor of the model has no recipe")
        return Recipe(tuple(self.recipes[key]), tuple(t.shape), self)

    def _replay(self, steps: tuple[_Step, ...], shape: tuple[int, ...]) -> Tensor:
        value: Tensor | None = None
        for step in steps:
            if step.rng_state is not None:
                self.generator.set_state(step.rng_state)
            if step.view is None:
                value = step.func(*step.args, **self._device_kwargs(step.kwargs))
                continue
            own = value.view(step.view)
            args, kwargs = pytree.tree_map(lambda a, own=own: own if a is _SELF else a, (step.args, step.kwargs))
            result = step.func(*args, **kwargs)
            if not step.inplace:
                value = result.contiguous()
        return value.view(shape)


@dataclass(frozen=True)
class Recipe:
    """The recorded ops that compute one tensor of a meta-built model."""

    steps: tuple[_Step, ...]
    shape: tuple[int, ...]
    recorder: InitRecorder

    def replay(self) -> Tensor:
        """The tensor, computed on the recorder's device in its recorded dtype (moves the generator)."""
        return self.recorder._replay(self.steps, self.shape)
