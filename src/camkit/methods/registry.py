"""The method registry: every method is a pure function on one captured layer pass.

A method is registered once with what it needs from the engine; ``camkit.explain`` runs the
forward pass (and the backward pass, when any requested method needs gradients) exactly once
and hands the same :class:`LayerPass` to every requested method.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

# What a method can ask of the engine.
GRADIENTS = "gradients"  # d score / d activation, (B, K, C, h, w)
INPUT_GRADIENTS = "input_gradients"  # guided-backprop gradients at the input, (B, K, *x.shape[1:])


@dataclass
class LayerPass:
    """Everything one forward (and at most one backward) pass produced.

    Attributes:
        activations: ``(B, C, h, w)`` float32 activation of the target layer.
        gradients: ``(B, K, C, h, w)`` float32 gradients of each target score with respect to
            the activation, or ``None`` when no requested method needs them.
        input_gradients: ``(B, K, *input_shape)`` guided-backprop gradients, or ``None``.
        scores: ``(B, K)`` float32 target scores of the unperturbed input.
        target_indices: ``(B, K)`` class indices, or ``None`` for custom score targets.
        outputs: the model's raw output for the input.
        inputs: the input tensor(s) as given to the model.
        model: the model being explained (borrowed; do not modify).
        layer: the target module.
        layer_name: its dotted name.
        rescore_inputs: ``f(inputs, rows) -> (n, K)``: the target scores of new inputs, where
            ``rows[i]`` is the index of the original image whose targets apply to input ``i``.
        rescore_activations: ``f(acts, rows) -> (n, K)``: the target scores when the target
            layer outputs ``acts`` (``(n, C, h, w)``) instead of the captured activation.
        input_size: ``(H, W)`` spatial size of the (first) input.
        generator: seeded ``torch.Generator`` for stochastic methods, or ``None``.
        notes: free-form facts methods report (e.g. which execution path was taken).
        score_outputs: ``f(outputs, rows) -> (n, K)``: the target scores read from a model
            output (for methods that run part of the model themselves), or ``None``.
    """

    activations: Tensor
    gradients: Tensor | None
    input_gradients: Tensor | None
    scores: Tensor
    target_indices: Tensor | None
    outputs: Any
    inputs: Any
    model: torch.nn.Module
    layer: torch.nn.Module
    layer_name: str
    rescore_inputs: Callable[[Any, Tensor], Tensor]
    rescore_activations: Callable[[Tensor, Tensor], Tensor]
    input_size: tuple[int, int]
    generator: torch.Generator | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    score_outputs: Callable[[Any, Tensor | None], Tensor] | None = None


@dataclass(frozen=True)
class Method:
    """A registered method.

    ``compute(layer_pass, **options)`` returns raw maps ``(B, K, h, w)`` (or at the input
    resolution ``(B, K, H, W)``), float32, before ReLU, upsampling and normalisation.
    ``options`` names the keyword options the method accepts; ``camkit.explain`` passes each
    method only the options it declares.
    """

    name: str
    summary: str
    paper: str
    compute: Callable[..., Tensor]
    needs: frozenset[str] = frozenset()
    options: tuple[str, ...] = ()
    # False for maps that are already signed evidence (guided backprop) and must not be ReLU'd.
    relu: bool = True


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the registry (its name must be new)."""
    if method.name in _METHODS:
        raise ValueError(f"a method named {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method called ``name``; a clear error naming the alternatives."""
    key = name.lower().strip()
    if key in _METHODS:
        return _METHODS[key]
    close = difflib.get_close_matches(key, list(_METHODS), n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(
        f"unknown method {name!r}.{hint} Available: {', '.join(sorted(_METHODS))}."
    )


def available_methods() -> dict[str, str]:
    """Method names with their one-line descriptions, in registration order."""
    return {name: method.summary for name, method in _METHODS.items()}
