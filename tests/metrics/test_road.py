"""ROAD against a plain loop: rank the pixels, impute densely, add the noise, score."""

from __future__ import annotations

import pytest
import torch

from camkit.metrics import road, road_curve, road_lerf, road_morf, top1_confidence
from camkit.metrics.road import (
    curve_mean,
    imputation_noise,
    removal_counts,
    removal_masks,
    road_combined,
)
from camkit.metrics.robustness import Noise
from tests.models import metric_case
from tests.reference import linear_imputation_reference

PERCENTAGES = (10, 50, 90)


@pytest.fixture
def case():
    model, x, maps, targets, g = metric_case([[0, 4], [2, 1]], (7, 6), seed=3)
    noise = 0.05 * torch.randn(2, 3, 7, 6, generator=g)
    return model, x, maps, targets, noise


def slow_curve(model, x, maps, targets, noise, order):
    """One image, map and percentage at a time, every step written out."""
    out = torch.zeros(*targets.shape, len(PERCENTAGES))
    n = x.shape[-1] * x.shape[-2]
    for b in range(x.shape[0]):
        for k in range(maps.shape[1]):
            values = maps[b, k].flatten().tolist()
            # most salient first; equal values in row-major order
            order_of = sorted(range(n), key=lambda i: (-values[i], i))
            for s, p in enumerate(PERCENTAGES):
                count = int(p * n / 100 + 0.5)
                chosen = order_of[:count] if order == "morf" else order_of[n - count:]
                removed = torch.zeros(n, dtype=torch.bool)
                removed[chosen] = True
                removed = removed.view(x.shape[-2:])
                image = linear_imputation_reference(x[b], removed).float() + noise[b] * removed
                with torch.no_grad():
                    out[b, k, s] = model(image[None]).softmax(dim=1)[0, targets[b, k]]
    return out


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_curve_equals_the_loop(case, order):
    model, x, maps, targets, noise = case
    fast = road_curve(model, x, maps, targets, order=order, percentages=PERCENTAGES,
                      noise=noise, batch_size=4, tol=1e-7)
    assert fast.shape == (2, 2, 3)
    assert torch.allclose(fast, slow_curve(model, x, maps, targets, noise, order), atol=1e-5)


def test_summaries(case):
    model, x, maps, targets, noise = case
    options = dict(percentages=PERCENTAGES, noise=noise)
    morf = road_curve(model, x, maps, targets, order="morf", **options)
    lerf = road_curve(model, x, maps, targets, order="lerf", **options)
    assert torch.allclose(road_morf(model, x, maps, targets, **options), morf.mean(dim=-1))
    assert torch.allclose(road_lerf(model, x, maps, targets, **options), curve_mean(lerf))
    assert torch.allclose(road(model, x, maps, targets, **options), (lerf - morf).mean(-1) / 2)
    assert torch.allclose(road_combined(morf, lerf), -road_combined(lerf, morf))
    with pytest.raises(TypeError, match="runs both orders"):
        road(model, x, maps, targets, order="morf")


def test_seeded_noise_is_the_robustness_noise_and_independent_of_batching(case):
    model, x, maps, targets, _ = case
    field = Noise("gaussian", 0.01, 7).sample(x, 1, [5, 9])[:, 0]
    assert torch.equal(imputation_noise(x, 0.01, 7, [5, 9]), field)
    assert imputation_noise(x, 0.0, 7, None) is None
    whole = road_curve(model, x, maps, targets, percentages=PERCENTAGES, seed=7, keys=[5, 9])
    given = road_curve(model, x, maps, targets, percentages=PERCENTAGES, noise=field)
    assert torch.allclose(whole, given, atol=1e-6)
    alone = road_curve(model, x[1:], maps[1:], targets[1:], percentages=PERCENTAGES, seed=7,
                       keys=[9], batch_size=1)
    assert torch.allclose(alone, whole[1:], atol=1e-6)


def test_removal_counts_and_masks():
    assert removal_counts(42, (0, 10, 50, 100)) == [0, 4, 21, 42]
    assert removal_counts(10, (25,)) == [3]  # 2.5 rounds up
    ranks = torch.tensor([[2, 0, 3, 1]])
    assert removal_masks(ranks, torch.tensor([1]), "morf").tolist() == [[False, True, False,
                                                                         False]]
    assert removal_masks(ranks, torch.tensor([1]), "lerf").tolist() == [[False, False, True,
                                                                         False]]
    with pytest.raises(ValueError, match="percentages must lie"):
        removal_counts(10, (120,))
    with pytest.raises(ValueError, match="order must be"):
        removal_masks(ranks, torch.tensor([1]), "random")


def test_top1_confidence_is_accuracy():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])
    assert top1_confidence(logits).tolist() == [[0, 1, 0], [1, 0, 0]]


def test_errors(case):
    model, x, maps, targets, _ = case
    with pytest.raises(ValueError, match="noise tensor"):
        road_curve(model, x, maps, targets, noise=torch.zeros(1, 3, 7, 6))
    with pytest.raises(ValueError, match="at least one percentage"):
        road_curve(model, x, maps, targets, percentages=())
    with pytest.raises(ValueError, match="noise must be >= 0"):
        road_curve(model, x, maps, targets, noise=-1.0)
