"""Average Drop, Increase in Confidence, deletion and insertion against hand computations and
slow, obvious re-implementations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from camkit.capture.batches import forward_bytes
from camkit.metrics import (
    auc,
    average_drop,
    confidence_function,
    deletion_auc,
    deletion_curve,
    drop_percent,
    increase_in_confidence,
    increase_percent,
    insertion_curve,
    masked_confidence,
    pixel_flipping,
    pixel_flipping_curve,
)
from camkit.metrics.faithfulness import baseline_image, saliency_ranks, step_counts
from camkit.metrics.scoring import make_scorer, sigmoid_confidence, softmax_confidence
from tests.models import metric_case


class MeanLogit(nn.Module):
    """Two classes with logits ``(mean of channel 0, 0)``: softmax confidence of class 0 is
    ``σ(mean)``, easy to compute by hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x[:, 0].mean(dim=(1, 2))
        return torch.stack([mean, torch.zeros_like(mean)], dim=1)


@pytest.fixture
def case():
    return metric_case([[0, 4], [2, 2], [1, 3]], (6, 6), seed=3)[:4]


def slow_confidence(model, image, cls, confidence=softmax_confidence):
    with torch.no_grad():
        return float(confidence(model(image[None]))[0, cls])


def test_drop_and_increase_terms_by_hand():
    base = torch.tensor([[0.5, 0.2, 0.0005]])
    masked = torch.tensor([[0.25, 0.3, 0.0001]])
    drop = drop_percent(base, masked)
    assert drop[0, 0] == pytest.approx(50.0)
    assert drop[0, 1] == 0.0  # a rise is no drop
    assert math.isnan(drop[0, 2])  # Y < 1e-3: undefined
    assert increase_percent(base, masked).tolist() == [[0.0, 100.0, 0.0]]


def test_average_drop_of_a_model_computed_by_hand():
    a, c = 2.0, 0.25  # a constant image of value a, a constant map of value c
    x = torch.full((1, 3, 4, 4), a)
    maps = torch.full((1, 1, 4, 4), c)
    y, o = 1 / (1 + math.exp(-a)), 1 / (1 + math.exp(-c * a))
    targets = torch.tensor([[0]])
    assert average_drop(MeanLogit(), x, maps, targets).item() == pytest.approx(
        100 * (y - o) / y, rel=1e-6)
    assert increase_in_confidence(MeanLogit(), x, maps, targets).item() == 0.0
    # class 1's confidence 1 − σ(mean) rises when the image is dimmed
    assert increase_in_confidence(MeanLogit(), x, maps, targets + 1).item() == 100.0


def test_masked_confidence_equals_a_loop(case):
    model, x, maps, targets = case
    fast = masked_confidence(model, x, maps, targets, batch_size=4)  # 6 rows in 2 chunks
    for b in range(3):
        for k in range(2):
            slow = slow_confidence(model, x[b] * maps[b, k], int(targets[b, k]))
            assert fast[b, k].item() == pytest.approx(slow, abs=1e-6)


def test_a_memory_budget_sizes_the_forward_passes(case):
    """``batch_size=None``: as many masked images per pass as the engine's estimate fits into
    ``max_batch_memory`` (camkit.capture.batches), with the values of fixed-size chunks."""
    model, x, maps, targets = case
    sizes = []
    handle = model.register_forward_hook(lambda module, args, out: sizes.append(len(args[0])))
    try:
        budgeted = masked_confidence(model, x, maps, targets, batch_size=None,
                                     max_batch_memory=2 * forward_bytes((x,)))
    finally:
        handle.remove()
    assert sizes == [2, 2, 2]  # 6 masked images, 2 per pass
    torch.testing.assert_close(budgeted, masked_confidence(model, x, maps, targets))
    with pytest.raises(ValueError, match="batch_size"):
        masked_confidence(model, x, maps, targets, batch_size=0)


def test_given_base_and_sigmoid_confidence(case):
    model, x, maps, targets = case
    base = make_scorer(model, "sigmoid")(x, targets)
    direct = average_drop(model, x, maps, targets, confidence="sigmoid")
    assert torch.allclose(average_drop(model, x, maps, targets, confidence="sigmoid", base=base),
                          direct, equal_nan=True)
    slow_y = slow_confidence(model, x[1], 2, sigmoid_confidence)
    slow_o = slow_confidence(model, x[1] * maps[1, 0], 2, sigmoid_confidence)
    assert direct[1, 0].item() == pytest.approx(100 * max(0, slow_y - slow_o) / slow_y, rel=1e-5)
    with pytest.raises(ValueError, match="base confidences"):
        average_drop(model, x, maps, targets, base=base[:, :1])


def test_confidence_choice():
    logits = torch.tensor([[1.0, -1.0]])
    assert confidence_function(None, "single-label") is softmax_confidence
    assert confidence_function(None, "multi-label") is sigmoid_confidence
    assert torch.equal(confidence_function("logit")(logits), logits)
    double = confidence_function(lambda z: 2 * z)
    assert torch.equal(double(logits), 2 * logits)
    with pytest.raises(ValueError, match="unknown confidence 'softmx'"):
        confidence_function("softmx")
    with pytest.raises(ValueError, match="task must be"):
        confidence_function(None, "multi")


def test_saliency_ranks_and_step_counts_by_hand():
    maps = torch.tensor([[[[3.0, 1.0], [2.0, 3.0]]]])
    assert saliency_ranks(maps).tolist() == [[[0, 3, 2, 1]]]  # ties: row-major order
    assert step_counts(10, 4) == [0, 3, 5, 8, 10]  # 2.5 and 7.5 round up


@pytest.mark.parametrize(("curve", "area"), [
    ([1.0, 1.0, 1.0], 1.0),
    ([1.0, 0.0], 0.5),
    ([0.0, 1.0, 0.0], 0.5),
    ([1.0, 0.5, 0.25, 0.0], 2.5 / 6),
])
def test_auc_of_hand_made_curves(curve, area):
    assert auc(torch.tensor(curve)).item() == pytest.approx(area)


def slow_curve(model, start, end, saliency, cls, steps):
    """Replace pixels one step at a time in a plain Python order of decreasing saliency."""
    h, w = saliency.shape
    pixels = sorted(range(h * w), key=lambda p: (-float(saliency.flatten()[p]), p))
    values = []
    for s in range(steps + 1):
        n = math.floor(s * h * w / steps + 0.5)
        image = start.clone()
        for p in pixels[:n]:
            image[:, p // w, p % w] = end[:, p // w, p % w]
        values.append(slow_confidence(model, image, cls))
    return values


def test_deletion_and_insertion_curves_equal_a_loop(case):
    model, x, maps, targets = case
    deletion = deletion_curve(model, x, maps, targets, steps=5, batch_size=7)
    grey = torch.full_like(x, 0.5)
    insertion = insertion_curve(model, x, maps, targets, steps=5, baseline=0.5, batch_size=7)
    for b in range(3):
        for k in range(2):
            cls = int(targets[b, k])
            expected = slow_curve(model, x[b], torch.zeros_like(x[b]), maps[b, k], cls, 5)
            assert deletion[b, k].tolist() == pytest.approx(expected, abs=1e-6)
            expected = slow_curve(model, grey[b], x[b], maps[b, k], cls, 5)
            assert insertion[b, k].tolist() == pytest.approx(expected, abs=1e-6)
    assert torch.allclose(deletion_auc(model, x, maps, targets, steps=5), auc(deletion))


def test_pixel_flipping_equals_a_loop(case):
    """Bach et al.'s pixel flipping: the most salient pixels set to the image's minimum."""
    model, x, maps, targets = case
    curves = pixel_flipping_curve(model, x, maps, targets, steps=4, batch_size=5)
    for b in range(3):
        for k in range(2):
            floor = torch.full_like(x[b], float(x[b].min()))
            expected = slow_curve(model, x[b], floor, maps[b, k], int(targets[b, k]), 4)
            assert curves[b, k].tolist() == pytest.approx(expected, abs=1e-6)
    assert torch.allclose(pixel_flipping(model, x, maps, targets, steps=4), auc(curves))


def test_curve_ends_are_the_image_and_the_baseline(case):
    model, x, maps, targets = case
    curve = insertion_curve(model, x, maps, targets, steps=3)
    scorer = make_scorer(model)
    assert torch.allclose(curve[..., -1], scorer(x, targets), atol=1e-6)
    assert torch.allclose(curve[..., 0], scorer(baseline_image(x, "blur"), targets), atol=1e-6)


def test_baselines():
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(baseline_image(x, "zero"), torch.zeros_like(x))
    assert torch.equal(baseline_image(x, 0.25), torch.full_like(x, 0.25))
    blurred = baseline_image(x, "blur")
    assert blurred.shape == x.shape and blurred.std() < x.std()
    assert torch.equal(baseline_image(x, torch.ones(3, 1, 1)), torch.ones_like(x))
    black = baseline_image(x, "black")  # each image's own minimum
    assert torch.equal(black[1], torch.full_like(x[1], float(x[1].min())))
    with pytest.raises(ValueError, match="baseline must be"):
        baseline_image(x, "noise")


def test_bad_inputs_are_named(case):
    model, x, maps, targets = case
    with pytest.raises(ValueError, match="expl.raw"):
        average_drop(model, x, maps[..., :3, :3], targets)
    with pytest.raises(TypeError, match="integer tensor"):
        average_drop(model, x, maps, targets.float())
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        average_drop(model, x, maps, targets[:, :1])
    with pytest.raises(ValueError, match="steps must be"):
        deletion_curve(model, x, maps, targets, steps=0)
