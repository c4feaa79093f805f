"""Cutting a model at a layer, so that perturbation methods re-run only the part after it.

``torch.fx`` traces the model with the target layer kept as one opaque call; the graph is cut
there into a *head* and a *tail*. The tail maps the layer's output (plus any values computed
before the layer that the rest of the network still uses, e.g. a skip connection's input) to
the model's output; the head computes those side values once per call from the real inputs.
Ablation-CAM then evaluates C ablated activations with C runs of the tail instead of C full
forward passes (DESIGN principle 5).

Splits are cached per model, layer and train/eval mode. Every use is first checked
numerically: the tail must reproduce the model's own scores from the captured activation, on
a batch of a different size than the input's (which catches a batch size baked into the trace).
Whatever cannot be traced or fails the check raises :class:`SplitError`; callers then fall
back to full forward passes.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn

Scores = Callable[[Any, Tensor | None], Tensor]


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


class _Tracer(fx.Tracer):
    """The default tracer, with the target layer kept as a single call."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return m is self.layer or super().is_leaf_module(m, module_qualified_name)


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
    side = [n for n in nodes if n in boundary and n in from_inputs]
    constants = _ancestors([n for n in boundary if n not in from_inputs])

    tail = fx.Graph()
    env: dict[fx.Node, fx.Node] = {cut: tail.placeholder("activation")}
    for i, node in enumerate(side):
        env[node] = tail.placeholder(f"side_{i}")
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
    tracer = _Tracer(layer)
    # Tracing runs forward() on proxies: undo whatever it assigns to the modules' attributes.
    attributes = [(m, dict(m.__dict__)) for m in model.modules()]
    try:
        graph = tracer.trace(model)
    except Exception as error:  # noqa: BLE001 - any tracing failure means "not splittable"
        raise SplitError(f"torch.fx cannot trace the model ({type(error).__name__}: {error})") \
            from error
    finally:
        for module, saved in attributes:
            module.__dict__.clear()
            module.__dict__.update(saved)
    root = fx.GraphModule(tracer.root, graph)
    calls = [n for n in graph.nodes
             if n.op == "call_module" and root.get_submodule(str(n.target)) is layer]
    if len(calls) != 1:
        raise SplitError(f"the layer is called {len(calls)} times in the traced forward pass")
    return _cut(root, calls[0])


# model -> layer -> training flag -> Split or the SplitError it raised
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


def checked_tail(model: nn.Module, layer: nn.Module, inputs: tuple[Tensor, ...],
                 activation: Tensor, scores: Tensor, score: Scores,
                 rtol: float = 1e-4) -> Callable[[Tensor, Tensor], Tensor]:
    """``f(activation (n, C, h, w), rows) -> (n, K)`` float32 target scores computed by the part
    of ``model`` after ``layer`` only.

    ``activation`` ``(B, C, h, w)`` is the layer's captured output and ``scores`` ``(B, K)`` the
    model's target scores for it; the tail must reproduce them (relative tolerance ``rtol``)
    on the rows ``0..B-1, 0``, else a cached split is re-traced once and then
    :class:`SplitError` is raised. Runs without gradients."""
    dtype = _param_dtype(model)
    rows = torch.cat([torch.arange(len(activation)), torch.zeros(1, dtype=torch.long)])
    rows = rows.to(activation.device)
    expected = scores[rows]
    problem = ""
    for fresh in (False, True):
        split = split_model(model, layer, fresh=fresh)
        try:
            with torch.no_grad():
                run = split.bind(inputs)
                got = score(run(activation[rows].to(dtype), rows), rows).float()
        except Exception as error:  # noqa: BLE001 - a tail that fails to run is not usable
            problem = str(error) if isinstance(error, SplitError) else (
                f"the cut model failed to run ({type(error).__name__}: {error})")
            continue
        scale = float(expected.abs().max().clamp(min=1.0))
        if got.shape == expected.shape and torch.allclose(got, expected, rtol=rtol,
                                                          atol=rtol * scale):
            return _scoring(run, score, dtype)
        problem = "the cut model does not reproduce the model's scores"
    _cache[model][layer][model.training] = SplitError(problem)
    raise SplitError(problem)


def _scoring(run: Callable[[Tensor, Tensor], Any], score: Scores,
             dtype: torch.dtype) -> Callable[[Tensor, Tensor], Tensor]:
    def rescore(activation: Tensor, rows: Tensor) -> Tensor:
        with torch.no_grad():
            return score(run(activation.to(dtype), rows), rows).float()

    return rescore
