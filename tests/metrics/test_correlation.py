"""Faithfulness correlation against a plain loop and its identity on a linear model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from camkit.metrics import faithfulness_correlation, random_subsets
from camkit.metrics.correlation import subset_attributions, subset_drops
from tests.models import LinearScore, metric_case


def slow_correlation(model, x, maps, targets, subsets):
    """Image by image, subset by subset, with the image minimum as the baseline."""
    out = torch.zeros(targets.shape)
    for b in range(x.shape[0]):
        for k in range(targets.shape[1]):
            sums, drops = [], []
            with torch.no_grad():
                base = model(x[b:b + 1]).softmax(dim=1)[0, targets[b, k]].item()
            for chosen in subsets[b].tolist():
                image = x[b].clone()
                for pixel in chosen:
                    i, j = divmod(pixel, x.shape[-1])
                    image[:, i, j] = x[b].min()
                with torch.no_grad():
                    after = model(image[None]).softmax(dim=1)[0, targets[b, k]].item()
                drops.append(base - after)
                sums.append(sum(maps[b, k].flatten()[p].item() for p in chosen))
            ma, md = sum(sums) / len(sums), sum(drops) / len(drops)
            cov = sum((s - ma) * (d - md) for s, d in zip(sums, drops, strict=True))
            var = math.sqrt(sum((s - ma) ** 2 for s in sums) * sum((d - md) ** 2 for d in drops))
            out[b, k] = cov / var
    return out


def test_equals_the_loop():
    model, x, maps, targets, _ = metric_case([[0, 3], [2, 2]], (6, 6), seed=1)
    subsets = random_subsets(x, 8, 5, seed=3)
    fast = faithfulness_correlation(model, x, maps, targets, subsets=subsets, batch_size=5)
    assert torch.allclose(fast, slow_correlation(model, x, maps, targets, subsets), atol=1e-4)
    # drawn with the same seed inside: the same values
    drawn = faithfulness_correlation(model, x, maps, targets, n_runs=8, subset_size=5, seed=3)
    assert torch.allclose(drawn, fast, atol=1e-6)


def test_a_map_of_each_pixels_effect_on_a_linear_model_correlates_at_one():
    torch.manual_seed(2)
    model = LinearScore(3, 5, 5)
    x = torch.randn(3, 3, 5, 5)
    effect = (model.weight * x).sum(dim=1, keepdim=True)  # each pixel's share of the logit
    targets = torch.zeros(3, 1, dtype=torch.long)
    got = faithfulness_correlation(model, x, effect, targets, n_runs=20, subset_size=6,
                                   baseline="zero", confidence="logit")
    assert torch.allclose(got, torch.ones(3, 1), atol=1e-5)
    flipped = faithfulness_correlation(model, x, -effect, targets, n_runs=20, subset_size=6,
                                       baseline="zero", confidence="logit")
    assert torch.allclose(flipped, -torch.ones(3, 1), atol=1e-5)


def test_subsets_are_distinct_seeded_and_keyed():
    x = torch.zeros(3, 3, 4, 5)
    subsets = random_subsets(x, 6, 7, seed=1)
    assert subsets.shape == (3, 6, 7) and subsets.min() >= 0 and subsets.max() < 20
    assert all(len(set(s)) == 7 for s in subsets.flatten(0, 1).tolist())
    assert torch.equal(random_subsets(x, 6, 7, seed=1), subsets)
    assert not torch.equal(random_subsets(x, 6, 7, seed=2), subsets)
    assert torch.equal(random_subsets(x[2:], 6, 7, seed=1, keys=[2]), subsets[2:])
    with pytest.raises(ValueError, match="subset_size"):
        random_subsets(x, 6, 21)
    with pytest.raises(ValueError, match="n_runs >= 2"):
        random_subsets(x, 1, 3)


def test_attributions_and_drops_shapes():
    maps = torch.arange(2 * 2 * 3 * 3, dtype=torch.float).view(2, 2, 3, 3)
    subsets = torch.tensor([[[0, 8]], [[4, 5]]])
    assert subset_attributions(maps, subsets).tolist() == [[[0 + 8, 9 + 17]], [[22 + 23, 31 + 32]]]
    model = nn.Sequential(nn.Flatten(), nn.Linear(27, 4))
    drops = subset_drops(model, torch.randn(2, 3, 3, 3), subsets, torch.tensor([[1, 2], [0, 3]]))
    assert drops.shape == (2, 1, 2)
