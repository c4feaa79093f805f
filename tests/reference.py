"""Slow, literal formulas that the tests hold the library's fast arithmetic against."""

from __future__ import annotations

from torch import Tensor


def gradcam_plus_plus_alpha_weights(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM++ channel weights written as the paper writes them (Chattopadhay et al. 2018,
    eqs. 10 and 19 for ``Y = exp(s)``): ``α = g² / (2g² + (Σ_ab A_ab) g³)`` (0 where the
    denominator is 0), then ``w_k = Σ_ij α_ij ReLU(g_ij)``.
    ``(B, C, h, w)`` and ``(B, K, C, h, w)`` → ``(B, K, C)``."""
    g2 = gradients.pow(2)
    channel_sum = activations.sum(dim=(-2, -1))[:, None, :, None, None]
    denominator = 2 * g2 + channel_sum * g2 * gradients
    alpha = (g2 / denominator).where(denominator != 0, g2.new_zeros(()))
    return (alpha * gradients.clamp(min=0)).sum(dim=(-2, -1))
