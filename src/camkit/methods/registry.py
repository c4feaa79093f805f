"""The method registry: every method is a pure function on one captured layer pass.

A method is registered once with what it needs from the engine; ``camkit.explain`` runs the
forward pass (and the backward pass, when any requested method needs gradients) exactly once
and hands the same :class:`camkit.capture.LayerPass` to every requested method.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

# What a method can ask of the engine.
GRADIENTS = "gradients"  # d score / d activation, (B, K, C, h, w)
INPUT_GRADIENTS = "input_gradients"  # guided-backprop gradients at the input, (B, K, *x.shape[1:])
ATTENTION = "attention"  # the attention of a transformer's blocks (the method runs it itself)


@dataclass(frozen=True)
class Method:
    """A registered method.

    ``compute(layer_pass, **options)`` returns raw maps ``(B, K, h, w)`` (or at the input
    resolution ``(B, K, H, W)``), float32, before ReLU, upsampling and normalisation.
    ``options`` names the keyword options the method accepts; ``camkit.explain`` passes each
    method only the options it declares. ``maths`` are the pure functions that hold the
    method's equations (their docstrings state them, with shapes); ``example`` is a doctest
    of the method's class when the generic one cannot run (a method that needs a trained
    artefact), with ``model`` and ``x`` given. ``channel_terms(layer_pass, **options)``, for a
    map that is a sum over the layer's channels, returns the ``(B, K, C, h, w)`` terms of that
    sum (``eigen_smooth`` takes their first principal component instead).
    """

    name: str
    summary: str
    paper: str
    compute: Callable[..., Tensor]
    needs: frozenset[str] = frozenset()
    options: tuple[str, ...] = ()
    # False for maps that are already signed evidence (guided backprop) and must not be ReLU'd.
    relu: bool = True
    maths: tuple[Callable[..., Any], ...] = ()
    example: str = ""
    channel_terms: Callable[..., Tensor] | None = None


_METHODS: dict[str, Method] = {}

# Options that carry a trained artefact: a method that declares one cannot run without it.
ARTIFACT_OPTIONS = ("memory", "bank")


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


def needed_artifact(name: str) -> str | None:
    """The artefact option (``"memory"``, ``"bank"``) that method ``name`` cannot run
    without, or ``None``."""
    return next((o for o in get_method(name).options if o in ARTIFACT_OPTIONS), None)
