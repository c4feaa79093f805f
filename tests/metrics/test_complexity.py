"""Sparseness (Gini) and complexity (entropy) against their identities and plain loops."""

from __future__ import annotations

import math

import pytest
import torch

from camkit.metrics import complexity, sparseness


def slow_gini(values: list[float]) -> float:
    """Gini as the mean absolute difference over twice the mean: Σ_ij |a_i − a_j| / (2 n² ā)."""
    n = len(values)
    mean = sum(values) / n
    return sum(abs(a - b) for a in values for b in values) / (2 * n * n * mean)


def slow_entropy(values: list[float]) -> float:
    total = sum(values)
    return -sum(v / total * math.log(v / total) for v in values if v > 0)


def test_identities():
    n = 6 * 7
    one_hot = torch.zeros(1, 1, 6, 7)
    one_hot[0, 0, 2, 3] = 0.8
    flat = torch.full((1, 1, 6, 7), 0.3)
    assert sparseness(one_hot).item() == pytest.approx((n - 1) / n)
    assert sparseness(flat).item() == pytest.approx(0.0, abs=1e-6)
    assert complexity(one_hot).item() == pytest.approx(0.0)
    assert complexity(flat).item() == pytest.approx(math.log(n))
    zero = torch.zeros(1, 1, 3, 3)
    assert math.isnan(sparseness(zero).item()) and math.isnan(complexity(zero).item())


def test_equal_plain_loops_on_signed_maps():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 3, 5, 4, generator=g)
    maps[0, 0, :2] = 0  # zeros count in both
    gini, entropy = sparseness(maps), complexity(maps)
    assert gini.shape == entropy.shape == (2, 3)
    for b in range(2):
        for k in range(3):
            values = maps[b, k].abs().flatten().tolist()
            assert gini[b, k].item() == pytest.approx(slow_gini(values), abs=1e-5)
            assert entropy[b, k].item() == pytest.approx(slow_entropy(values), abs=1e-5)


def test_scale_invariant_and_ordered():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(1, 1, 8, 8, generator=g)
    assert sparseness(5 * maps).item() == pytest.approx(sparseness(maps).item(), abs=1e-6)
    peaked = maps ** 6  # more concentrated
    assert sparseness(peaked) > sparseness(maps)
    assert complexity(peaked) < complexity(maps)
