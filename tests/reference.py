"""Slow, literal formulas that the tests hold the library's fast arithmetic against."""

from __future__ import annotations

import torch
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


def linear_imputation_reference(x: Tensor, removed: Tensor) -> Tensor:
    """ROAD's imputation built pixel by pixel: for each removed pixel ``i`` of ``x`` ``(C, H,
    W)`` (``removed`` ``(H, W)`` bool), ``Σ_j w_ij (v_i − v_j) = 0`` over its in-image
    neighbours (1/6 across an edge, 1/12 across a corner), kept pixels fixed; solved densely in
    float64."""
    channels, height, width = x.shape
    unknowns = [(i, j) for i in range(height) for j in range(width) if removed[i, j]]
    index = {p: n for n, p in enumerate(unknowns)}
    a = torch.zeros(len(unknowns), len(unknowns), dtype=torch.float64)
    b = torch.zeros(len(unknowns), channels, dtype=torch.float64)
    for (i, j), row in index.items():
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                ii, jj = i + di, j + dj
                if (di, dj) == (0, 0) or not (0 <= ii < height and 0 <= jj < width):
                    continue
                weight = 1 / 12 if di and dj else 1 / 6
                a[row, row] += weight
                if (ii, jj) in index:
                    a[row, index[ii, jj]] -= weight
                else:
                    b[row] += weight * x[:, ii, jj].double()
    out = x.double().clone()
    if unknowns:
        solution = torch.linalg.solve(a, b)
        for (i, j), row in index.items():
            out[:, i, j] = solution[row]
    return out
