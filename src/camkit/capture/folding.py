"""A faster copy of a model: batch norm folded into convolutions, weights in channels-last.

Every convolution followed by a plain ``BatchNorm2d`` absorbs it (``BN(conv(x)) = conv'(x)``
with folded weights and bias: exact algebra, ``torch.nn.utils.fusion.fuse_conv_bn_eval``), and
4-D weights take the channels-last layout, the fastest exact layout for convolutions. The
user's model is never modified: the copy is a deep copy, and it must reproduce the model's own
outputs before it is used; when it cannot be made (untraceable forward, training mode, ...) or
does not reproduce them, the model itself runs.

Two users:

- the perturbation methods (Score-CAM, occlusion, RISE) run hundreds of modified inputs
  through :func:`evaluation_model`, checked against the call's scores;
- ``camkit.explain``'s one forward pass runs through :func:`forward_model`: a copy kept per
  model (with the target layers as single calls, so that their outputs can be captured), made
  the first time a model is explained with these weights and checked against the model's
  outputs once. The gradient methods only differentiate the part after the target layer,
  which the copy computes identically up to float rounding.

Measured on resnet18 (batch 27, 2 CPU cores; `benchmarks/bench_perturbation.py`, `layout` rows):
folded and channels-last 0.64-0.84× the time of the plain model on an AMD EPYC, 0.33-0.49×
with bf16 autocast; the gain depends on the CPU.
"""

from __future__ import annotations

import copy
import itertools
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, fx, nn
from torch.nn.modules import module as torch_module
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..targets import Scores
from . import split

RTOL = 1e-4  # relative tolerance (of the outputs' largest magnitude) for the copy's outputs


def fold_batch_norms(graph: fx.GraphModule, kept: frozenset[str] = frozenset()) -> None:
    """Fold every ``Conv2d → BatchNorm2d`` pair of ``graph`` (each called once, the convolution
    feeding only the batch norm, neither named in ``kept``) into one convolution, in place.
    Only plain ``BatchNorm2d`` modules are folded: a subclass may do more (an activation)."""
    modules = dict(graph.named_modules())
    calls = [str(n.target) for n in graph.graph.nodes if n.op == "call_module"]
    for node in list(graph.graph.nodes):
        conv = node.args[0] if node.op == "call_module" and node.args else None
        if not (isinstance(conv, fx.Node) and conv.op == "call_module"
                and type(modules[str(node.target)]) is nn.BatchNorm2d
                and type(modules[str(conv.target)]) is nn.Conv2d and len(conv.users) == 1
                and not {str(node.target), str(conv.target)} & kept
                and calls.count(str(node.target)) == calls.count(str(conv.target)) == 1):
            continue
        parent, _, name = str(conv.target).rpartition(".")
        folded = fuse_conv_bn_eval(modules[str(conv.target)], modules[str(node.target)])
        setattr(graph.get_submodule(parent), name, folded)
        node.replace_all_uses_with(conv)
        graph.graph.erase_node(node)
    graph.delete_all_unused_submodules()
    graph.recompile()


def folded_copy(model: nn.Module, kept: tuple[str, ...] = ()) -> nn.Module:
    """A deep copy of ``model`` (in eval mode) with convolution + batch norm pairs folded,
    4-D weights in channels-last layout and frozen parameters; the modules named in ``kept``
    stay single calls under the same names. Raises when torch.fx cannot trace the model."""
    if model.training:
        raise ValueError("batch norm folding needs the model in eval mode")
    duplicate = copy.deepcopy(model)
    graph = split.traced(duplicate, tuple(duplicate.get_submodule(n) for n in kept))
    fold_batch_norms(graph, frozenset(kept))
    return graph.requires_grad_(False).to(memory_format=torch.channels_last)


def _tensors(outputs: Any) -> list[Tensor]:
    """The tensors in a model output (a tensor, a tuple or list, a dict, ``.logits``)."""
    if isinstance(outputs, Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        return [t for v in outputs.values() for t in _tensors(v)]
    if isinstance(outputs, (tuple, list)):
        return [t for v in outputs for t in _tensors(v)]
    logits = getattr(outputs, "logits", None)
    return [logits] if isinstance(logits, Tensor) else []


def reproduces(got: Any, expected: Any, rtol: float = RTOL) -> bool:
    """Whether the output ``got`` equals ``expected`` within ``rtol`` of its largest magnitude."""
    pairs = list(zip(_tensors(got), _tensors(expected), strict=False))
    if not pairs or len(_tensors(got)) != len(_tensors(expected)):
        return False
    for a, b in pairs:
        scale = float(b.detach().abs().max().clamp(min=1.0)) if b.numel() else 1.0
        if a.shape != b.shape or not torch.allclose(a.detach().float(), b.detach().float(),
                                                    rtol=rtol, atol=rtol * scale):
            return False
    return True


@dataclass
class _Kept:
    """The copy of one model, for one state of its weights."""

    state: tuple[tuple[int, int], ...]
    model: nn.Module | None = None
    kept: frozenset[str] = field(default_factory=frozenset)
    problem: str = ""
    compiled: nn.Module | None = None


_kept: weakref.WeakKeyDictionary[nn.Module, _Kept] = weakref.WeakKeyDictionary()


def weights_state(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """Where every parameter and buffer lives and its version counter: any change autograd
    sees (an optimiser step, ``load_state_dict``, ``.to(...)``, a replaced module) changes it.
    A change through ``tensor.data`` does not: call :func:`forget` after one."""
    return tuple((t.data_ptr(), t._version)
                 for t in itertools.chain(model.parameters(), model.buffers()))


def forget(model: nn.Module) -> None:
    """Drop the folded copy kept for ``model`` (after changing its weights through ``.data``)."""
    _kept.pop(model, None)


def _hooked(model: nn.Module) -> bool:
    """Whether forward hooks would run on the model (the copy would not run them)."""
    return bool(torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks
                or any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()))


def forward_model(model: nn.Module, layers: Mapping[str, nn.Module], inputs: tuple[Tensor, ...]
                  ) -> tuple[nn.Module, dict[str, nn.Module]]:
    """The module that should run ``camkit.explain``'s forward pass, and its target layers:
    the kept folded copy with its own modules of the same names, or ``model`` and ``layers``.

    The copy is made the first time ``model`` is explained with these weights and used only
    after it has reproduced the model's outputs on that call's inputs (one extra pass of each,
    once); a model it cannot reproduce runs itself until its weights change. Every call with
    the same weights thus runs the same module (results do not depend on call order)."""
    names = frozenset(layers)
    if model.training or _hooked(model) or "" in names:
        return model, dict(layers)
    entry = _entry(model)
    if (entry.model is None or not names <= entry.kept) and not entry.problem:
        _make(model, entry, names | entry.kept, inputs)
    copy_ = entry.model
    if copy_ is None or not names <= entry.kept:
        return model, dict(layers)
    found = {name: copy_.get_submodule(name) for name in layers if _has(copy_, name)}
    return (copy_, found) if len(found) == len(layers) else (model, dict(layers))


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:  # a module the traced forward pass never calls
        return False
    return True


def _entry(model: nn.Module) -> _Kept:
    """The model's entry for the present state of its weights (a new one after a change)."""
    state = weights_state(model)
    entry = _kept.get(model)
    if entry is None or entry.state != state:
        entry = _kept[model] = _Kept(state)
    return entry


def _make(model: nn.Module, entry: _Kept, kept: frozenset[str],
          inputs: tuple[Tensor, ...]) -> None:
    """Build the copy keeping ``kept`` as single calls and check it on ``inputs``."""
    try:
        folded = folded_copy(model, tuple(sorted(kept)))
        with torch.no_grad():
            ok = reproduces(folded(*inputs), model(*inputs))
    except Exception as error:  # noqa: BLE001 - any failure means "run the model itself"
        entry.problem = f"{type(error).__name__}: {error}"
        return
    if ok:
        entry.model, entry.kept = folded, kept
    else:
        entry.problem = "the folded copy did not reproduce the model's outputs"


def evaluation_model(model: nn.Module, inputs: tuple[Tensor, ...], scores: Tensor,
                     score: Scores, rtol: float = RTOL) -> tuple[nn.Module, str]:
    """The model that should run the perturbation passes and a note saying which it is: the
    folded copy (the kept one, or a new one, then kept) when it reproduces ``scores``
    ``(B, K)`` (the model's target scores, as read by ``score`` from the outputs) on
    ``inputs`` within ``rtol``, else ``model`` itself."""
    entry = None if model.training else _entry(model)
    try:
        folded = entry.model if entry and entry.model else folded_copy(model)
        with torch.no_grad():
            got = score(folded(*inputs), None).float()
    except Exception as error:  # noqa: BLE001 - any failure means "use the model itself"
        return model, f"the model itself (no folded copy: {type(error).__name__}: {error})"
    if not reproduces(got, scores, rtol):
        return model, "the model itself (the folded copy did not reproduce its scores)"
    if entry is not None and entry.model is None:
        entry.model = folded
    return folded, "a folded channels-last copy"


class FixedBatch(nn.Module):
    """A module compiled for static shapes, run on inputs padded (by repeating their last row)
    to the batch size of the first call, its outputs cut back, so that a short last batch
    never recompiles it. When compiling fails on the first call (no C++ compiler, an
    unsupported operation), ``fallback`` runs instead. ``report`` hears what happened on the
    first call: ``{"compile": note, "first_batch_seconds": s}`` (compilation included)."""

    def __init__(self, compiled: nn.Module, fallback: nn.Module,
                 report: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self.compiled, self.fallback, self.report = compiled, fallback, report
        self.size: int | None = None

    def forward(self, *inputs: Tensor) -> Any:
        n = inputs[0].shape[0]
        if self.size is None:
            return self._first(inputs)
        if n >= self.size:
            return self.compiled(*inputs)
        padded = [torch.cat([t, t[-1:].expand(self.size - n, *t.shape[1:])]) for t in inputs]
        return _first_rows(self.compiled(*padded), n, self.size)

    def _first(self, inputs: tuple[Tensor, ...]) -> Any:
        self.size, began = inputs[0].shape[0], time.perf_counter()
        note = "compiled (torch.compile, inductor, frozen weights)"
        try:
            outputs = self.compiled(*inputs)
        except Exception as error:  # noqa: BLE001 - compiling failed: run the module itself
            self.compiled = self.fallback
            note = f"not compiled ({type(error).__name__}: {str(error).splitlines()[0]})"
            outputs = self.fallback(*inputs)
        self.report({"compile": note, "first_batch_seconds": time.perf_counter() - began})
        return outputs


def _first_rows(outputs: Any, n: int, size: int) -> Any:
    """The first ``n`` rows of every batch-sized tensor of an output."""
    if isinstance(outputs, Tensor):
        return outputs[:n] if outputs.dim() and outputs.shape[0] == size else outputs
    if isinstance(outputs, dict):
        return type(outputs)({k: _first_rows(v, n, size) for k, v in outputs.items()})
    if isinstance(outputs, (tuple, list)) and not hasattr(outputs, "_fields"):
        return type(outputs)(_first_rows(v, n, size) for v in outputs)
    return outputs


def compiled_model(model: nn.Module, folded: nn.Module,
                   report: Callable[[dict[str, Any]], None]) -> FixedBatch:
    """``folded`` (the kept copy of ``model``, or ``model``) compiled by ``torch.compile`` with
    inductor's weight freezing, for no-grad evaluations of one batch size
    (:class:`FixedBatch`). The compiled module is kept with the copy, so that a model compiles
    once per state of its weights (and batch size)."""
    entry = None if model.training else _entry(model)
    if entry is not None and entry.model is folded and entry.compiled is not None:
        compiled = entry.compiled
    else:
        compiled = cast(nn.Module, torch.compile(folded, dynamic=False,
                                                 options={"freezing": True}))
        if entry is not None and entry.model is folded:
            entry.compiled = compiled
    return FixedBatch(compiled, folded, report)
