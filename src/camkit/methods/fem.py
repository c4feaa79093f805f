"""FEM, the Feature Explanation Method (Fuad et al. 2020): a gradient-free, class-agnostic map
that weights each channel by how often it fires far above its own mean.

Raw maps are ``(B, K, h, w)``, the same for every target.
"""

from __future__ import annotations

from torch import Tensor

from ..capture import LayerPass
from .gradient import weighted_sum
from .registry import Method, register


def fem_weights(activations: Tensor, k: float = 2.0) -> Tensor:
    """FEM channel weights (the k-sigma rule): ``w_c = (1/Z) Σ_ij 1[A^c_ij > μ_c + k σ_c]``, the
    share of positions where channel ``c`` exceeds its spatial mean by ``k`` (population)
    standard deviations. ``(B, C, h, w)`` → ``(B, C)``."""
    flat = activations.flatten(2)
    mean, std = flat.mean(dim=2, keepdim=True), flat.std(dim=2, correction=0, keepdim=True)
    return (flat > mean + k * std).float().mean(dim=2)


def fem(activations: Tensor, n_targets: int, k: float = 2.0) -> Tensor:
    """FEM map ``Σ_c w_c A^c`` with :func:`fem_weights`, repeated for the ``n_targets``
    targets: ``(B, C, h, w)`` → ``(B, K, h, w)``."""
    weights = fem_weights(activations, k)[:, None].expand(-1, n_targets, -1)
    return weighted_sum(weights, activations)


def _fem(layer_pass: LayerPass, k: float = 2.0) -> Tensor:
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise TypeError(f"k must be a number of standard deviations, got {k!r}")
    return fem(layer_pass.activations, layer_pass.scores.shape[1], float(k))


register(Method(
    "fem", "channels weighted by how often they exceed their mean by k standard deviations",
    "Fuad et al., Features Understanding in 3D CNNs for Actions Recognition in Video, "
    "IPTA 2020", _fem, options=("k",), maths=(fem, fem_weights),
))
