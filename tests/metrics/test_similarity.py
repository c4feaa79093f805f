"""Pearson, Spearman (with ties) and SSIM against slow, obvious loops and known values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from camkit.metrics.similarity import (
    SIMILARITIES,
    minmax_abs,
    pearson,
    ranks,
    similarity,
    spearman,
    ssim,
)


def slow_ranks(values: list[float]) -> list[float]:
    """Mean rank from 0 of each value among ``values`` (ties share it)."""
    out = []
    for v in values:
        below = sum(1 for u in values if u < v)
        equal = sum(1 for u in values if u == v)
        out.append(below + (equal - 1) / 2)
    return out


def slow_pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    den = math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))
    return num / den


def slow_ssim(a: np.ndarray, b: np.ndarray, win: tuple[int, int], data_range: float) -> float:
    """skimage's definition window by window: sample (co)variances, valid positions only."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(a.shape[0] - win[0] + 1):
        for j in range(a.shape[1] - win[1] + 1):
            x = a[i:i + win[0], j:j + win[1]].ravel()
            y = b[i:i + win[0], j:j + win[1]].ravel()
            mx, my = x.mean(), y.mean()
            vx, vy = x.var(ddof=1), y.var(ddof=1)
            cov = ((x - mx) * (y - my)).sum() / (x.size - 1)
            values.append((2 * mx * my + c1) * (2 * cov + c2)
                          / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ranks_share_ties_like_a_count():
    g = torch.Generator().manual_seed(0)
    values = torch.randint(0, 4, (3, 11), generator=g).float()
    got = ranks(values)
    for row, expected in zip(got, values, strict=True):
        assert row.tolist() == pytest.approx(slow_ranks(expected.tolist()))


def test_pearson_and_spearman_equal_loops():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 20, generator=g)
    b = a + torch.randn(4, 20, generator=g)
    b[0, :5] = b[0, 5]  # ties
    for i in range(4):
        assert pearson(a, b)[i].item() == pytest.approx(slow_pearson(a[i].tolist(),
                                                                     b[i].tolist()), abs=1e-6)
        assert spearman(a, b)[i].item() == pytest.approx(
            slow_pearson(slow_ranks(a[i].tolist()), slow_ranks(b[i].tolist())), abs=1e-6)


def test_correlations_of_known_pairs():
    a = torch.arange(10.0)
    assert pearson(a, 3 * a + 1).item() == pytest.approx(1.0)
    assert spearman(a, a.exp()).item() == pytest.approx(1.0)  # monotone: ρ = 1, r < 1
    assert pearson(a, a.exp()).item() < 0.9
    assert spearman(a, -a).item() == pytest.approx(-1.0)
    assert math.isnan(pearson(a, torch.ones(10)).item())  # a constant: undefined
    assert math.isnan(spearman(torch.ones(10), a).item())


@pytest.mark.parametrize("window", [7, (1, 7), (3, 5)])
def test_ssim_equals_the_window_loop(window):
    g = torch.Generator().manual_seed(2)
    a = torch.rand(2, 12, 13, generator=g)
    b = (a + 0.3 * torch.rand(2, 12, 13, generator=g)).clamp(0, 1)
    win = (window, window) if isinstance(window, int) else window
    got = ssim(a, b, window)
    for i in range(2):
        both = np.concatenate([a[i].numpy().ravel(), b[i].numpy().ravel()])
        expected = slow_ssim(a[i].double().numpy(), b[i].double().numpy(), win,
                             float(both.max() - both.min()))
        assert got[i].item() == pytest.approx(expected, abs=1e-5)
    assert ssim(a, b, window, data_range=1.0).shape == (2,)


def test_ssim_agrees_with_skimage_when_installed():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(16, 16, generator=g), torch.rand(16, 16, generator=g)
    expected = metrics.structural_similarity(a.double().numpy(), b.double().numpy(),
                                             data_range=1.0)
    assert ssim(a, b, data_range=1.0).item() == pytest.approx(expected, abs=1e-5)


def test_ssim_identities_and_errors():
    a = torch.rand(1, 9, 9)
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-6)
    assert ssim(torch.zeros(9, 9), torch.zeros(9, 9), data_range=1.0).item() == 1.0
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        ssim(torch.rand(5, 5), torch.rand(5, 5))
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.rand(9, 9), torch.rand(9, 8))


def test_named_similarities():
    g = torch.Generator().manual_seed(4)
    maps = torch.randn(2, 3, 8, 8, generator=g)
    for name in SIMILARITIES:
        same = similarity(name)(maps, maps)
        assert same.shape == (2, 3) and torch.allclose(same, torch.ones(2, 3), atol=1e-5)
    # the absolute variants ignore a sign flip, the signed one sees it
    assert torch.allclose(similarity("spearman-abs")(maps, -maps), torch.ones(2, 3), atol=1e-6)
    assert torch.allclose(similarity("spearman")(maps, -maps), -torch.ones(2, 3), atol=1e-6)
    assert minmax_abs(torch.full((4, 4), -2.0)).abs().max() == 0  # constant: zeros
    with pytest.raises(ValueError, match="unknown similarity"):
        similarity("hog")
