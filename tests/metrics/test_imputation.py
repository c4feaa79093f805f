"""ROAD's linear imputation against a dense solve of the system built pixel by pixel."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from camkit.metrics.imputation import linear_imputation, neighbour_sum, prolong, restrict
from tests.reference import linear_imputation_reference


def test_neighbour_sum_weights():
    t = torch.zeros(1, 1, 5, 5)
    t[0, 0, 2, 2] = 1.0
    got = neighbour_sum(t)[0, 0]
    assert got[1, 2] == got[3, 2] == got[2, 1] == got[2, 3] == pytest.approx(1 / 6)
    assert got[1, 1] == got[3, 3] == got[1, 3] == got[3, 1] == pytest.approx(1 / 12)
    assert got[2, 2] == 0 and got.sum() == pytest.approx(1.0)
    # outside the image counts as nothing: a corner pixel sees 3 neighbours
    assert neighbour_sum(torch.ones(1, 1, 4, 4))[0, 0, 0, 0] == pytest.approx(1 / 6 * 2 + 1 / 12)


@pytest.mark.parametrize("size", [(8, 8), (9, 7), (13, 11)])
def test_restrict_is_the_transpose_of_prolong(size):
    g = torch.Generator().manual_seed(0)
    coarse_size = ((size[0] + 1) // 2, (size[1] + 1) // 2)
    fine = torch.randn(2, 3, *size, generator=g)
    coarse = torch.randn(2, 3, *coarse_size, generator=g)
    lhs = (restrict(fine) * coarse).sum()
    rhs = (fine * prolong(coarse, size)).sum()
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-5)
    # prolongation interpolates: a constant stays constant away from the edges
    flat = prolong(torch.ones(1, 1, 4, 4), (8, 8))
    assert torch.allclose(flat[..., 1:-1, 1:-1], torch.ones(1, 1, 6, 6))


@pytest.mark.parametrize("fraction", [0.1, 0.6, 0.95])
def test_equals_the_dense_solve(fraction):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 13, 11, generator=g)
    removed = torch.rand(3, 1, 13, 11, generator=g) < fraction
    got = linear_imputation(x, removed, tol=1e-7)
    for b in range(3):
        expected = linear_imputation_reference(x[b], removed[b, 0])
        assert torch.allclose(got[b].double(), expected, atol=1e-5)
    assert torch.equal(got[~removed.expand_as(x)], x[~removed.expand_as(x)])  # kept pixels


def test_a_large_hole_converges_and_is_smooth():
    """A 48 × 48 image with a 36 × 36 hole: the solution is harmonic, so it lies between the
    boundary values, and equals the dense solve."""
    x = torch.linspace(-1, 1, 48).view(1, 1, 1, 48).expand(1, 2, 48, 48).contiguous()
    x[:, 1] = x[:, 1].transpose(-1, -2) * 3
    removed = torch.zeros(1, 1, 48, 48, dtype=torch.bool)
    removed[..., 6:42, 6:42] = True
    got = linear_imputation(x + 0.0, removed)
    assert torch.allclose(got, x, atol=1e-3)  # a linear ramp is its own imputation


def test_blobs_like_saliency_maps():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 20, 20, generator=g)
    smooth = F.interpolate(torch.randn(2, 1, 3, 3, generator=g), size=(20, 20), mode="bilinear")
    removed = smooth > smooth.flatten(1).quantile(0.3, dim=1).view(-1, 1, 1, 1)
    got = linear_imputation(x, removed)
    for b in range(2):
        assert torch.allclose(got[b].double(), linear_imputation_reference(x[b], removed[b, 0]),
                              atol=1e-4)


def test_edge_cases():
    x = torch.randn(2, 3, 6, 6)
    none = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    assert torch.equal(linear_imputation(x, none), x)
    everything = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    assert linear_imputation(x, everything).abs().max() == 0  # no boundary: zeros
    assert linear_imputation(x.double(), none).dtype == torch.float64
    with pytest.raises(ValueError, match="removed must be"):
        linear_imputation(x, none[:, :, :5])
