"""Complexity: how concentrated a map is, read from the map alone (no model evaluation).

- Sparseness (Chalasani et al., Concise Explanations of Neural Networks using Adversarial
  Training, ICML 2020): the Gini index of the absolute map, 0 for a constant map and
  ``(n − 1)/n`` for a map with a single non-zero pixel. Higher is sparser.
- Complexity (Bhatt et al., Evaluating and Aggregating Feature-based Model Explanations,
  IJCAI 2020): the Shannon entropy of the absolute map normalised to a distribution,
  ``log n`` for a constant map and 0 for a single non-zero pixel. Lower is simpler.

Shapes: ``maps`` ``(B, K, H, W)`` (any ``(..., H, W)``) → ``(B, K)``; an all-zero map has no
distribution and gives NaN (undefined), not a number that looks like a score.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _masses(maps: Tensor) -> tuple[Tensor, Tensor]:
    """``|M|`` flattened to ``(..., n)`` in at least float32, and its total ``(...)``."""
    flat = maps.flatten(-2).abs()
    flat = flat.to(torch.promote_types(flat.dtype, torch.float32))
    return flat, flat.sum(dim=-1)


def sparseness(maps: Tensor) -> Tensor:
    """Gini index of ``|M|`` (Chalasani et al. 2020, eq. 4; Hurley & Rickard 2009):
    ``G = Σ_i (2i − n − 1) a_(i) / (n Σ_i a_i)`` with ``a_(1) ≤ … ≤ a_(n)`` the sorted absolute
    values, ``(..., H, W)`` → ``(...)``; NaN for an all-zero map."""
    flat, total = _masses(maps)
    n = flat.shape[-1]
    ordered = flat.sort(dim=-1).values
    weights = 2 * torch.arange(1, n + 1, device=maps.device, dtype=flat.dtype) - n - 1
    gini = (ordered * weights).sum(dim=-1) / (n * total)
    return gini.where(total > 0, torch.nan)


def complexity(maps: Tensor) -> Tensor:
    """Entropy of the map as a distribution (Bhatt et al. 2020, §4.1):
    ``H = −Σ_i p_i log p_i`` with ``p_i = |M_i| / Σ_j |M_j|`` and ``0 log 0 = 0`` (natural
    log), ``(..., H, W)`` → ``(...)``; NaN for an all-zero map."""
    flat, total = _masses(maps)
    p = flat / total.unsqueeze(-1).where(total.unsqueeze(-1) > 0, 1.0)
    entropy = -torch.special.xlogy(p, p).sum(dim=-1)
    return entropy.where(total > 0, torch.nan)
