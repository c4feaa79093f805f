"""Shapley-CAM (Cai 2025): CAM channel weights read as Shapley values of the channels, to second
order. Cost: one forward pass from the target layer and one double backward pass per target
(a pass of its own, since it needs the graph of the gradient). Raw maps ``(B, K, h, w)``.

On a network that is piecewise linear after the layer (ReLU, max-pooling, linear layers) the
Hessian vanishes almost everywhere and Shapley-CAM is Grad-CAM; the paper pairs it with a
score through the softmax (its ReST target, ``y_c + log p_c``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..capture import LayerPass
from .gradient import weighted_sum
from .registry import Method, register


def shapley_weights(gradients: Tensor, hessian_products: Tensor) -> Tensor:
    """Shapley-CAM channel weights (Cai 2025): the gradient corrected to second order,
    ``w_k = (1/Z) Σ_ij (∂s/∂A − ½ H A)^k_ij`` with ``H A`` the Hessian of the score with
    respect to the activation times the activation. ``(B, K, C, h, w)`` each → ``(B, K, C)``."""
    return (gradients - 0.5 * hessian_products).mean(dim=(-2, -1))


def shapleycam(activations: Tensor, gradients: Tensor, hessian_products: Tensor) -> Tensor:
    """Shapley-CAM map ``Σ_k w_k A^k`` with :func:`shapley_weights`: ``(B, C, h, w)`` and two
    ``(B, K, C, h, w)`` → ``(B, K, h, w)``."""
    return weighted_sum(shapley_weights(gradients, hessian_products), activations)


def _shapleycam(layer_pass: LayerPass) -> Tensor:
    rows = torch.arange(len(layer_pass.inputs[0]), device=layer_pass.inputs[0].device)
    gradients, products = layer_pass.gradients_at(layer_pass.inputs, rows, hessian=True)
    return shapleycam(layer_pass.activations, gradients, products)


register(Method(
    "shapleycam", "channels weighted by gradients corrected with the Hessian (Shapley values)",
    "Cai, CAMs as Shapley Value-based Explainers, 2025 (arXiv:2501.06261)", _shapleycam,
    maths=(shapleycam, shapley_weights),
))
