"""What one captured pass hands to every method: the :class:`LayerPass`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..targets import Scores
from .attention import BlockAttention


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
        gradients_for_inputs: ``f(inputs, rows, hessian=False) -> (n, K, C, h, w)``: float32
            gradients of the target scores at the layer when the model runs on new inputs
            (with ``hessian=True`` also the Hessian-vector products ``H A``: ``(2, n, K, C, h,
            w)``), or ``None``.
        attention: the blocks that computed an attention in the pass, in call order, with
            their output tokens, attention outputs and values
            (:func:`camkit.capture.attention.recording_attention`), or ``None``.
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
    score_outputs: Scores | None = None
    gradients_for_inputs: Callable[..., Tensor] | None = None
    attention: list[BlockAttention] | None = None

    @property
    def gradients_at(self) -> Callable[..., Tensor]:
        """:attr:`gradients_for_inputs` (set by ``camkit.explain`` for every pass)."""
        return _present(self.gradients_for_inputs, "a gradient taker", "nothing")

    @property
    def layer_gradients(self) -> Tensor:
        """:attr:`gradients`, for a method registered with ``needs={GRADIENTS}``."""
        return _present(self.gradients, "gradients", "GRADIENTS")

    @property
    def guided_gradients(self) -> Tensor:
        """:attr:`input_gradients`, for a method registered with ``needs={INPUT_GRADIENTS}``."""
        return _present(self.input_gradients, "input gradients", "INPUT_GRADIENTS")

    @property
    def block_attention(self) -> list[BlockAttention]:
        """:attr:`attention`, for a method registered with ``needs={ATTENTION}``."""
        return _present(self.attention, "attention", "ATTENTION")

    @property
    def output_scorer(self) -> Scores:
        """:attr:`score_outputs` (set by ``camkit.explain`` for every pass)."""
        return _present(self.score_outputs, "an output scorer", "nothing")


def _present(value: Any, what: str, need: str) -> Any:
    if value is None:
        raise RuntimeError(f"this layer pass holds no {what}: the method must be registered "
                           f"with needs {need}")
    return value
