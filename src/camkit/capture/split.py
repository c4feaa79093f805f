"""Cutting a model at a layer, so that perturbation methods re-run only the part after it.

``torch.fx`` traces the model with the target layer kept as one opaque call; the graph is cut
there into a *head* and a *tail*. The tail maps the layer's output (plus any values computed
before the layer that the rest of the network still uses, e.g. a skip connection's input) to
the model's output; the head computes those side values once per call from the real inputs.
Ablation-CAM then evaluates C ablated activations with C runs of the tail instead of C full
forward passes (DESIGN principle 5).

Modules whose class derives from a torch.nn layer (say a ``BatchNorm2d`` subclass) are kept as
opaque calls too, unless they contain the cut: torch.fx cannot trace the input checks inside
them. When the model cannot be cut at the layer itself, it is cut at the nearest enclosing
module whose output is the layer's output (the layer is its last operation, e.g. an activation
module inside a normalisation module).

Splits are cached per model, cut module and train/eval mode. Every use is first checked
numerically: the tail must reproduce the model's own scores from the captured activation, on
a batch of a different size than the input's (which catches a batch size baked into the trace),
and a cut above the layer must also agree with full forward passes on a modified activation.
Whatever cannot be traced or fails the check raises :class:`SplitError`; callers then fall
back to full forward passes.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn

from ..targets import Scores


class SplitError(RuntimeError):
    """The model cannot be split at the layer (the message says why)."""


@dataclass(frozen=True)
class Split:
    """A model cut at a layer: ``head(*inputs)`` gives the tuple of side values (``None`` when the
    rest of the network needs only the layer's output); ``tail(activation, *side)`` the model
    output."""

    head: fx.GraphModule | None
    tail: fx.GraphModule

    def bind(self, inputs: tuple[Tensor, ...]) -> Callable[[Tensor, Tensor], Any]:
        """``f(activation (n, ...), rows) -> model output`` for copies of the images ``rows`` of
        ``inputs`` whose layer output is replaced by ``activation``."""
        side = self.head(*inputs) if self.head is not None else ()
        for value in side:
            if isinstance(value, Tensor) and (value.dim() == 0 or value.shape[0] != len(inputs[0])):
                raise SplitError(
                    f"a value computed before the layer has shape {tuple(value.shape)}, which "
                    "is not per image; cannot re-run the rest of the model on other rows"
                )

        def run(activation: Tensor, rows: Tensor) -> Any:
            values = (v[rows] if isinstance(v, Tensor) else v for v in side)
            return self.tail(activation, *values)

        return run


_CONTAINERS = (nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _torch_layer_subclass(m: nn.Module) -> bool:
    """Whether ``m``'s class derives from a torch.nn layer class (containers do not count)."""
    return any(c.__module__.startswith("torch.nn") and c not in _CONTAINERS
               for c in type(m).__mro__[1:])


class _Tracer(fx.Tracer):
    """The default tracer, with the ``kept`` modules (a cut, target layers) and subclasses of
    torch.nn layers that contain none of them kept as single calls."""

    def __init__(self, kept: tuple[nn.Module, ...] = ()) -> None:
        super().__init__()
        self.kept = {id(m) for m in kept}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (id(m) in self.kept or super().is_leaf_module(m, module_qualified_name)
                or (_torch_layer_subclass(m)
                    and not any(id(c) in self.kept for c in m.modules())))


def traced(model: nn.Module, kept: tuple[nn.Module, ...] = ()) -> fx.GraphModule:
    """``model`` traced by torch.fx as a GraphModule that shares its modules, with the ``kept``
    modules and subclasses of torch.nn layers kept as single calls (tracing runs ``forward`` on
    proxies: trace a copy of a model whose forward assigns attributes). Raises what torch.fx
    raises."""
    return fx.GraphModule(model, _Tracer(kept).trace(model))


def _ancestors(nodes: list[fx.Node], stop: fx.Node | None = None) -> set[fx.Node]:
    """``nodes`` and everything they depend on (not looking past ``stop``)."""
    seen: set[fx.Node] = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node is not stop:
            stack.extend(node.all_input_nodes)
    return seen


def _is_batch_size(node: fx.Node) -> bool:
    """Whether ``node`` reads the batch size of a model input: ``x.size(0)`` or ``x.shape[0]``."""
    if node.op == "call_method" and node.target == "size":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        source = node.args[0]
    elif node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0:
        shape, dim = node.args[0], 0
        if not (isinstance(shape, fx.Node) and shape.op == "call_function"
                and shape.target is getattr and shape.args[1] == "shape"):
            return False
        source = shape.args[0]
    else:
        return False
    return bool(dim == 0 and isinstance(source, fx.Node) and source.op == "placeholder")


def _cut(root: fx.GraphModule, cut: fx.Node) -> Split:
    """Build the head and tail graphs of ``root`` around the node ``cut``."""
    nodes = list(root.graph.nodes)
    output = nodes[-1]
    after = {cut}  # nodes whose value depends on the layer's output
    from_inputs = set()  # nodes whose value depends on the model's inputs
    for node in nodes:
        inputs = node.all_input_nodes
        if node.op == "placeholder" or any(n in from_inputs for n in inputs):
            from_inputs.add(node)
        if any(n in after for n in inputs):
            after.add(node)
    if output not in after:
        raise SplitError("the model's output does not depend on the layer")
    needed = _ancestors([output], stop=cut)
    tail_nodes = (needed & after) - {cut}
    boundary = {n for t in tail_nodes for n in t.all_input_nodes if n not in after}
    # The batch size of an input is the activation's: read it there, never bake it in.
    batch_sizes = [n for n in nodes if n in boundary and _is_batch_size(n)]
    side = [n for n in nodes if n in boundary and n in from_inputs and n not in batch_sizes]
    constants = _ancestors([n for n in boundary if n not in from_inputs])

    tail = fx.Graph()
    env: dict[fx.Node, fx.Node] = {cut: tail.placeholder("activation")}
    for i, node in enumerate(side):
        env[node] = tail.placeholder(f"side_{i}")
    for node in batch_sizes:
        env[node] = tail.call_method("size", (env[cut], 0))
    for node in nodes:
        if node not in env and (node in tail_nodes or node in constants):
            env[node] = tail.node_copy(node, env.__getitem__)

    head = None
    if side:
        graph = fx.Graph()
        head_env: dict[fx.Node, fx.Node] = {}
        wanted = _ancestors(side)
        for node in nodes:
            if node.op == "placeholder" or node in wanted:
                head_env[node] = graph.node_copy(node, head_env.__getitem__)
        graph.output(tuple(head_env[n] for n in side))
        head = fx.GraphModule(root, graph)
    return Split(head, fx.GraphModule(root, tail))


def _trace(model: nn.Module, layer: nn.Module) -> Split:
    if layer is model:
        raise SplitError("the layer is the whole model")
    tracer = _Tracer((layer,))
    # Tracing runs forward() on proxies: undo whatever it assigns to the modules' attributes.
    attributes = [(m, dict(m.__dict__)) for m in model.modules()]
    try:  # the GraphModule copies the constants tracing stored on the model, so build it here
        graph = tracer.trace(model)
        root = fx.GraphModule(tracer.root, graph)
    except Exception as error:  # noqa: BLE001 - any tracing failure means "not splittable"
        raise SplitError(f"torch.fx cannot trace the model ({type(error).__name__}: {error})") \
            from error
    finally:
        for module, saved in attributes:
            module.__dict__.clear()
            module.__dict__.update(saved)
    calls = [n for n in graph.nodes
             if n.op == "call_module" and root.get_submodule(str(n.target)) is layer]
    if len(calls) != 1:
        raise SplitError(f"the layer is called {len(calls)} times in the traced forward pass")
    try:
        return _cut(root, calls[0])
    except SplitError:
        raise
    except Exception as error:  # noqa: BLE001 - a graph that cannot be cut is not splittable
        raise SplitError(f"the traced model cannot be cut ({type(error).__name__}: {error})") \
            from error


# model -> cut module -> training flag -> Split or the SplitError it raised
_cache: weakref.WeakKeyDictionary[nn.Module, weakref.WeakKeyDictionary[nn.Module, dict]] = (
    weakref.WeakKeyDictionary()
)


def split_model(model: nn.Module, layer: nn.Module, *, fresh: bool = False) -> Split:
    """The model cut at ``layer`` (traced once per model, layer and mode, then cached);
    raises :class:`SplitError` when it cannot be cut. ``fresh`` re-traces."""
    per_layer = _cache.setdefault(model, weakref.WeakKeyDictionary()).setdefault(layer, {})
    if fresh or model.training not in per_layer:
        try:
            per_layer[model.training] = _trace(model, layer)
        except SplitError as error:
            per_layer[model.training] = error
    found = per_layer[model.training]
    if isinstance(found, SplitError):
        raise found
    return found


def _param_dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _close(got: Tensor, expected: Tensor, rtol: float) -> bool:
    scale = float(expected.abs().max().clamp(min=1.0))
    return got.shape == expected.shape and torch.allclose(got, expected, rtol=rtol,
                                                          atol=rtol * scale)


def _enclosing(model: nn.Module, layer: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the modules that contain ``layer``, nearest first, without the
    model itself."""
    names = {id(m): name for name, m in model.named_modules()}
    name = names.get(id(layer), "")
    parts = name.split(".")[:-1]
    return [(".".join(parts[:i]), model.get_submodule(".".join(parts[:i])))
            for i in range(len(parts), 0, -1)]


def _checked_cut(model: nn.Module, cut: nn.Module, inputs: tuple[Tensor, ...],
                 probes: list[tuple[Tensor, Tensor]], score: Scores,
                 rtol: float) -> Callable[[Tensor, Tensor], Tensor]:
    """The scorer of the tail after ``cut`` once it reproduces every ``(activation, scores)``
    probe (rows ``0..B-1, 0``); a cached split is re-traced once, then :class:`SplitError`."""
    dtype = _param_dtype(model)
    rows = torch.cat([torch.arange(len(inputs[0])), torch.zeros(1, dtype=torch.long)])
    rows = rows.to(probes[0][0].device)
    problem = ""
    for fresh in (False, True):
        split = split_model(model, cut, fresh=fresh)
        try:
            with torch.no_grad():
                run = split.bind(inputs)
                ok = all(_close(score(run(a[rows].to(dtype), rows), rows).float(), s[rows], rtol)
                         for a, s in probes)
        except Exception as error:  # noqa: BLE001 - a tail that fails to run is not usable
            problem = str(error) if isinstance(error, SplitError) else (
                f"the cut model failed to run ({type(error).__name__}: {error})")
            continue
        if ok:
            return _scoring(run, score, dtype)
        problem = "the cut model does not reproduce the model's scores"
    _cache[model][cut][model.training] = SplitError(problem)
    raise SplitError(problem)


def checked_tail(model: nn.Module, layer: nn.Module, inputs: tuple[Tensor, ...],
                 activation: Tensor, scores: Tensor, score: Scores,
                 full: Callable[[Tensor, Tensor], Tensor], rtol: float = 1e-4,
                 ) -> tuple[Callable[[Tensor, Tensor], Tensor], str]:
    """``f(activation (n, C, h, w), rows) -> (n, K)`` float32 target scores computed by the part
    of ``model`` after ``layer`` only, and the name of the module where the model was cut.

    ``activation`` ``(B, C, h, w)`` is the layer's captured output and ``scores`` ``(B, K)`` the
    model's target scores for it; the tail must reproduce them (relative tolerance ``rtol``).
    A cut at an enclosing module must also reproduce ``full(modified, rows)``, the scores of
    full forward passes with the layer's output replaced, on a modified activation (its
    channels in reverse order). Raises :class:`SplitError` with the reason the layer itself
    could not be cut when no cut passes. Runs without gradients."""
    try:
        return _checked_cut(model, layer, inputs, [(activation, scores)], score, rtol), ""
    except SplitError as error:
        problem = error
    enclosing = _enclosing(model, layer)
    if enclosing:
        modified = activation.flip(1)
        rows = torch.arange(len(activation), device=activation.device)
        probes = [(activation, scores), (modified, full(modified, rows))]
    for name, module in enclosing:
        try:
            return _checked_cut(model, module, inputs, probes, score, rtol), name
        except SplitError:
            continue
    raise problem


def _scoring(run: Callable[[Tensor, Tensor], Any], score: Scores,
             dtype: torch.dtype) -> Callable[[Tensor, Tensor], Tensor]:
    def rescore(activation: Tensor, rows: Tensor) -> Tensor:
        with torch.no_grad():
            return score(run(activation.to(dtype), rows), rows).float()

    return rescore
