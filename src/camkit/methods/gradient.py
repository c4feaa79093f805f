"""Gradient methods: pure arithmetic on (activations, gradients) from the one shared pass.

Shapes throughout: activations ``A`` are ``(B, C, h, w)``; gradients ``G = ∂s/∂A`` are
``(B, K, C, h, w)`` (one slice per target); every function returns raw maps ``(B, K, h, w)``
before ReLU, upsampling and normalisation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..capture import LayerPass
from .registry import GRADIENTS, Method, register

EPS = 1e-7


def weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """``Σ_k α_k A^k``: channel weights ``(B, K, C)`` × ``(B, C, h, w)`` → ``(B, K, h, w)``."""
    return torch.einsum("bkc,bchw->bkhw", weights.to(activations.dtype), activations)


def gradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM (Selvaraju et al. 2017, eqs. 1-2): ``α^c_k = (1/Z) Σ_ij ∂s_c/∂A^k_ij``."""
    return weighted_sum(gradients.mean(dim=(-2, -1)), activations)


def gradcam_plus_plus_alpha(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM++ pixel coefficients (Chattopadhay et al. 2018, eq. 19, closed form for
    ``Y = exp(s)``): ``α_ij = g² / (2g² + (Σ_ab A^k_ab) g³)``, ``(B, K, C, h, w)``.

    The sum ``Σ_ab A^k_ab`` is per channel over all positions, times ``g³`` at the same
    position. Cancelling ``g²`` gives ``1 / (2 + (Σ_ab A^k_ab) g)``, which is what is computed;
    α is 0 where the paper's denominator is 0 (``g = 0`` or ``2 + Σ A g = 0``), and no epsilon
    is added, so tiny gradients keep their exact α."""
    channel_sum = activations.sum(dim=(-2, -1))[:, None, :, None, None]
    denominator = torch.addcmul(torch.full((), 2.0, dtype=gradients.dtype), channel_sum,
                                gradients)
    defined = (gradients != 0) & (denominator != 0)
    return denominator.reciprocal().where(defined, 0.0)


def positive_gradient_weights(alpha: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM++ channel weights ``w_k = Σ_ij α_ij ReLU(g_ij)`` (eq. 10), ``(B, K, C)``."""
    return (alpha * gradients.clamp(min=0)).sum(dim=(-2, -1))


def gradcam_plus_plus(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM++ map ``Σ_k w_k A^k`` with :func:`gradcam_plus_plus_alpha` and
    :func:`positive_gradient_weights`."""
    alpha = gradcam_plus_plus_alpha(activations, gradients)
    return weighted_sum(positive_gradient_weights(alpha, gradients), activations)


def xgradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """XGrad-CAM (Fu et al. 2020, eq. 13): ``α_k = Σ_ij (A^k_ij / Σ_ab A^k_ab) ∂s/∂A^k_ij``."""
    share = activations / (activations.sum(dim=(-2, -1), keepdim=True) + EPS)
    return weighted_sum((share[:, None] * gradients).sum(dim=(-2, -1)), activations)


def layercam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Layer-CAM (Jiang et al. 2021, eqs. 5-6): ``Σ_k ReLU(∂s/∂A^k_ij) · A^k_ij`` per position."""
    return (gradients.clamp(min=0) * activations[:, None]).sum(dim=2)


def hirescam(activations: Tensor, gradients: Tensor) -> Tensor:
    """HiRes-CAM (Draelos & Carin 2020): ``Σ_k ∂s/∂A^k_ij · A^k_ij`` (no spatial averaging)."""
    return (gradients * activations[:, None]).sum(dim=2)


def gradcam_elementwise(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM element-wise (pytorch-grad-cam's variant of HiRes-CAM):
    ``Σ_k ReLU(∂s/∂A^k_ij · A^k_ij)``, the ReLU taken per channel before the sum."""
    return (gradients * activations[:, None]).clamp(min=0).sum(dim=2)


def _on_pass(function):  # type: ignore[no-untyped-def]
    def compute(layer_pass: LayerPass) -> Tensor:
        return function(layer_pass.activations, layer_pass.layer_gradients)

    return compute


for _name, _function, _summary, _paper in [
    ("gradcam", gradcam, "channel weights = spatial mean of the score's gradient",
     "Selvaraju et al., Grad-CAM, ICCV 2017 (arXiv:1610.02391)"),
    ("gradcam++", gradcam_plus_plus, "Grad-CAM with pixel-wise weights of positive gradients",
     "Chattopadhay et al., Grad-CAM++, WACV 2018 (arXiv:1710.11063)"),
    ("xgradcam", xgradcam, "gradients weighted by normalised activations (axiom-based)",
     "Fu et al., Axiom-based Grad-CAM, BMVC 2020 (arXiv:2008.02312)"),
    ("layercam", layercam, "positive gradients times activations, position by position",
     "Jiang et al., LayerCAM, IEEE TIP 2021"),
    ("hirescam", hirescam, "gradients times activations summed over channels, no averaging",
     "Draelos & Carin, HiResCAM, 2020 (arXiv:2011.08891)"),
    ("gradcam-elementwise", gradcam_elementwise,
     "positive parts of gradients times activations, summed over channels",
     "pytorch-grad-cam's GradCAMElementWise (HiRes-CAM with a ReLU per channel)"),
]:
    register(Method(_name, _summary, _paper, _on_pass(_function), frozenset({GRADIENTS}),
                    maths=(_function,)))
