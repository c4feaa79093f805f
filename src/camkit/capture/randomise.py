"""Randomised copies of a model, for the model-parameter randomisation test (Adebayo, Gilmer,
Muelly, Goodfellow, Hardt, Kim, Sanity Checks for Saliency Maps, NeurIPS 2018, §3.1).

The network's parameters are split into groups (its blocks, by default) and the groups are
re-initialised from the top of the network down: cumulatively (cascading) or one at a time
(independent). Everything happens on a deep copy of the model: the user's model is never
touched, and the global random state is restored after each re-initialisation. A group is
re-initialised by its modules' own ``reset_parameters()`` (the layer's default initialisation,
which also resets batch-norm statistics), seeded by ``(seed, position of the group)``; a module
without one has each of its own parameters redrawn from a Gaussian with that parameter's mean
and standard deviation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .hooks import borrowed
from .layers import find_layer

BLOCK_SHARE = 0.25  # a block holding more than this share of the parameterised modules is split
ORDERS = ("cascading", "independent")


@dataclass(frozen=True)
class ParameterGroup:
    """The parameters of module ``name`` (``""`` is the model) and of its submodules, or with
    ``own_only`` only those the module holds itself."""

    name: str
    own_only: bool = False

    @property
    def label(self) -> str:
        base = self.name or "<model>"
        return f"{base} (own)" if self.own_only else base

    def modules(self, model: nn.Module) -> list[nn.Module]:
        """The modules whose own parameters the group holds."""
        root = find_layer(model, self.name) if self.name else model
        members = [root] if self.own_only else list(root.modules())
        return [m for m in members if _owns_parameters(m)]


def _owns_parameters(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def _holders(module: nn.Module) -> int:
    return sum(_owns_parameters(m) for m in module.modules())


def parameter_groups(model: nn.Module, layers: str | Sequence[str] | None = None,
                     share: float = BLOCK_SHARE) -> list[ParameterGroup]:
    """The groups randomised one step at a time.

    ``None`` (blocks): start from the model and split every group that holds more than
    ``share`` of the modules with parameters into its children (a module's own parameters
    become a group of their own), until none does: a ResNet gives its stem, its four stages and
    its classifier; an EfficientNet its stem, each of its blocks, its head and its classifier.
    ``"leaves"``: every module that holds parameters, one at a time. A list of module names:
    those modules (each with everything inside it)."""
    if isinstance(layers, str) and layers != "leaves":
        raise ValueError(f"layers must be None (blocks), 'leaves' or a list of module names, "
                         f"got {layers!r}")
    if layers == "leaves":
        return [ParameterGroup(n, own_only=_holders(m) > 1) for n, m in model.named_modules()
                if _owns_parameters(m)]
    if layers is not None:
        groups = [ParameterGroup(name) for name in layers]
        for group in groups:
            if not group.modules(model):
                raise ValueError(f"layer {group.name!r} holds no parameters to randomise")
        return groups
    total = _holders(model)
    if total == 0:
        raise ValueError("the model has no parameters to randomise")
    groups, named = [ParameterGroup("")], dict(model.named_modules())
    while True:
        split = [g for g in groups if not g.own_only and _holders(named[g.name]) > share * total
                 and any(_holders(c) for c in named[g.name].children())]
        if not split:
            return groups
        groups = [part for g in groups for part in (_children(named, g) if g in split else [g])]


def _children(named: dict[str, nn.Module], group: ParameterGroup) -> list[ParameterGroup]:
    module, prefix = named[group.name], f"{group.name}." if group.name else ""
    own = [ParameterGroup(group.name, own_only=True)] if _owns_parameters(module) else []
    return own + [ParameterGroup(prefix + name) for name, child in module.named_children()
                  if _holders(child)]


def forward_order(model: nn.Module, groups: Sequence[ParameterGroup],
                  inputs: tuple[Tensor, ...]) -> list[ParameterGroup]:
    """``groups`` sorted by when their module is first called in a forward pass of ``inputs``
    (input side first); groups the pass never reaches are left out."""
    first: dict[int, int] = {}
    handles = []
    modules = {g: (find_layer(model, g.name) if g.name else model) for g in groups}

    def hook(index: int) -> Callable[[nn.Module, Any], None]:
        def record(module: nn.Module, args: Any) -> None:
            first.setdefault(index, len(first))

        return record

    try:
        for index, module in enumerate(modules.values()):
            handles.append(module.register_forward_pre_hook(hook(index)))
        with borrowed(model), torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    reached = sorted((first[i], i) for i in range(len(groups)) if i in first)
    return [groups[i] for _, i in reached]


def group_seed(seed: int, position: int) -> int:
    """The seed of the group at ``position``: 63 bits mixed from ``(seed, position)``."""
    return int(np.random.SeedSequence([seed, position]).generate_state(1, np.uint64)[0] >> 1)


def randomise(model: nn.Module, group: ParameterGroup, seed: int) -> None:
    """Re-initialise ``group``'s parameters in ``model`` (in place: pass a copy), seeded; the
    global random state is restored afterwards."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for module in group.modules(model):
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
                continue
            for p in module.parameters(recurse=False):
                spread = float(p.std()) if p.numel() > 1 else 1.0
                p.normal_(float(p.mean()), spread if spread > 0 else 1.0)


def _saved(model: nn.Module, group: ParameterGroup) -> list[tuple[nn.Module, str, Tensor]]:
    return [(m, name, t.detach().clone()) for m in group.modules(model)
            for name, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]]


def randomised_copies(model: nn.Module, groups: Sequence[ParameterGroup], *,
                      order: str = "cascading", seed: int = 0, include_original: bool = False
                      ) -> Iterator[tuple[ParameterGroup | None, nn.Module]]:
    """For each group in turn (give them top-down), a copy of ``model`` in which that group
    and, with ``order="cascading"``, every group before it is re-initialised
    (``"independent"``: only that group); with ``include_original``, first the copy before any
    change (group ``None``: the control). One deep copy serves all steps and is yielded each
    time: use it before asking for the next. The group at position ``i`` is seeded with
    :func:`group_seed` ``(seed, i)`` in both orders, so both meet the same random weights."""
    if order not in ORDERS:
        raise ValueError(f"randomisation order must be one of {ORDERS}, got {order!r}")
    try:
        work = copy.deepcopy(model)
    except Exception as error:
        raise TypeError(f"the randomisation checks work on a copy of the model, and "
                        f"copy.deepcopy failed: {type(error).__name__}: {error}") from error
    if include_original:
        yield None, work
    for position, group in enumerate(groups):
        saved = _saved(work, group) if order == "independent" else []
        randomise(work, group, group_seed(seed, position))
        yield group, work
        with torch.no_grad():
            for module, name, tensor in saved:
                getattr(module, name).copy_(tensor)
