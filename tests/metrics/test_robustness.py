"""Infidelity and max-Sensitivity: hand cases, slow loops, and agreement with captum.metrics on
the same inputs and the same perturbations."""

from __future__ import annotations

import captum.metrics as captum_metrics
import pytest
import torch
from torch import nn

from camkit.capture.batches import forward_bytes
from camkit.metrics import (
    Noise,
    infidelity,
    infidelity_from,
    map_distances,
    max_sensitivity,
    method_explainer,
)
from camkit.metrics.scoring import softmax_confidence
from tests.models import metric_case


class PixelLinear(nn.Module):
    """``f_k(x) = Σ_chw V_k[h, w] · x[c, h, w]``: a linear model whose exact attribution for
    class k is ``V_k`` on every channel."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.weights = weights  # (n_classes, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,khw->bk", x, self.weights)


@pytest.fixture
def linear():
    g = torch.Generator().manual_seed(0)
    weights = torch.randn(3, 5, 5, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64)
    return PixelLinear(weights), x


@pytest.fixture
def tiny_case():
    return metric_case([[1], [4], [0]], (8, 8), seed=4)[:4]


def test_infidelity_is_zero_for_the_exact_attribution_of_a_linear_model(linear):
    model, x = linear
    targets = torch.tensor([[1, 2], [0, 1]])
    exact = model.weights[targets]  # (B, K, H, W)
    for normalize in (False, True):
        value = infidelity(model, x, exact, targets, confidence="logit", normalize=normalize,
                           noise=Noise("gaussian", 0.3, seed=5))
        assert value.abs().max() < 1e-20
    doubled = infidelity(model, x, 2 * exact, targets, confidence="logit")
    assert doubled.min() > 0.01  # wrong scale ...
    rescaled = infidelity(model, x, 2 * exact, targets, confidence="logit", normalize=True)
    assert rescaled.abs().max() < 1e-20  # ... which normalisation forgives


def test_infidelity_from_by_hand():
    dots = torch.tensor([[[1.0], [2.0]]])  # (B=1, n=2, K=1)
    drops = torch.tensor([[[1.0], [1.0]]])
    assert infidelity_from(dots, drops).item() == pytest.approx(0.5)  # (0² + 1²) / 2
    # β = (1 + 2) / (1 + 4) = 0.6: ((0.6 − 1)² + (1.2 − 1)²) / 2 = 0.1
    assert infidelity_from(dots, drops, normalize=True).item() == pytest.approx(0.1)
    zero = infidelity_from(torch.zeros(1, 2, 1), drops, normalize=True)
    assert zero.item() == pytest.approx(1.0)  # β = 0 when every IᵀΦ is 0


def test_infidelity_equals_a_loop_and_each_target_alone(tiny_case):
    model, x, _, _ = tiny_case
    maps = torch.rand(3, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([[1, 2], [4, 0], [0, 3]])
    noise = Noise("gaussian", 0.2, seed=7)
    fast = infidelity(model, x, maps, targets, noise=noise, n_samples=4, batch_size=5)
    draws = noise.sample(x, 4)
    for b in range(3):
        for k in range(2):
            cls = int(targets[b, k])
            with torch.no_grad():
                fx = softmax_confidence(model(x[b : b + 1]))[0, cls]
                terms = []
                for j in range(4):
                    fy = softmax_confidence(model(x[b : b + 1] - draws[b, j]))[0, cls]
                    dot = (draws[b, j] * maps[b, k]).sum()
                    terms.append((dot - (fx - fy)) ** 2)
            assert fast[b, k].item() == pytest.approx(float(sum(terms) / 4), rel=1e-4)
        alone = infidelity(model, x[b : b + 1], maps[b : b + 1, 1:], targets[b : b + 1, 1:],
                           noise=noise, n_samples=4, keys=[b])
        assert alone.item() == pytest.approx(fast[b, 1].item(), rel=1e-5)


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_agrees_with_captum(tiny_case, normalize):
    model, x, maps, targets = tiny_case
    noise = Noise("gaussian", 0.2, seed=3)
    n = 6
    draws = noise.sample(x, n).flatten(0, 1)

    def perturb(inputs):
        return draws, inputs - draws

    theirs = captum_metrics.infidelity(
        lambda inputs: softmax_confidence(model(inputs)), perturb, x,
        maps.expand(-1, 3, -1, -1), target=targets[:, 0], n_perturb_samples=n,
        normalize=normalize)
    ours = infidelity(model, x, maps, targets, noise=noise, n_samples=n, normalize=normalize)
    assert torch.allclose(ours[:, 0], theirs, rtol=1e-4, atol=1e-7)


def test_noise_is_seeded_per_image():
    x = torch.zeros(3, 2, 4, 4)
    noise = Noise("uniform", 0.02, seed=1)
    draws = noise.sample(x, 5, keys=[10, 11, 12])
    assert draws.shape == (3, 5, 2, 4, 4)
    assert draws.abs().max() <= 0.02 and draws.std() > 0.005
    assert torch.equal(noise.sample(x[:1], 5, keys=[11])[0], draws[1])  # batch-independent
    assert not torch.equal(Noise("uniform", 0.02, seed=2).sample(x, 5, [10, 11, 12]), draws)
    gaussian = Noise("gaussian", 2.0).sample(torch.zeros(1, 1, 100, 100), 2)
    assert gaussian.std().item() == pytest.approx(2.0, rel=0.05)
    with pytest.raises(ValueError, match="noise kind"):
        Noise("salt", 0.1)
    with pytest.raises(ValueError, match="3 images"):
        noise.sample(x, 2, keys=[1])


def test_map_distances_by_hand():
    reference = torch.tensor([[[[3.0, 0.0], [0.0, 4.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    perturbed = torch.tensor([[[[3.0, 1.0], [0.0, 4.0]]], [[[0.0, 2.0], [0.0, 0.0]]]])
    assert map_distances(reference, perturbed, relative=False).flatten().tolist() == [1.0, 2.0]
    # relative to ‖Φ(x)‖ = 5; a blank reference divides by 1 (captum's convention)
    assert map_distances(reference, perturbed).flatten().tolist() == pytest.approx([0.2, 2.0])


def test_sensitivity_of_an_explainer_that_returns_its_input():
    x = torch.rand(2, 1, 4, 4) + 0.5
    noise = Noise("uniform", 0.1, seed=2)
    value = max_sensitivity(lambda images, targets: images, x, x, torch.zeros(2, 1).long(),
                            noise=noise, n_samples=3, batch_size=4)
    draws = noise.sample(x, 3)
    for b in range(2):
        expected = max(float(draws[b, j].norm() / x[b].norm()) for j in range(3))
        assert value[b, 0].item() == pytest.approx(expected, rel=1e-5)
    fixed = max_sensitivity(lambda images, targets: torch.ones_like(images), x,
                            torch.ones_like(x), torch.zeros(2, 1).long())
    assert fixed.abs().max() == 0


def test_sensitivity_explains_as_many_copies_as_the_memory_budget_fits():
    x = torch.rand(2, 1, 4, 4) + 0.5
    chunks = []

    def explainer(images, targets):
        chunks.append(len(images))
        return images

    noise = Noise("uniform", 0.1, seed=2)
    budgeted = max_sensitivity(explainer, x, x, torch.zeros(2, 1).long(), noise=noise,
                               n_samples=3, batch_size=None,
                               max_batch_memory=4 * forward_bytes((x,)))
    assert chunks == [4, 2]  # 6 perturbed copies, 4 per call
    fixed = max_sensitivity(explainer, x, x, torch.zeros(2, 1).long(), noise=noise, n_samples=3)
    assert torch.equal(budgeted, fixed)


@pytest.mark.parametrize("relative", [True, False])
def test_sensitivity_of_gradcam_agrees_with_captum(tiny_case, relative):
    model, x, _, targets = tiny_case
    explainer = method_explainer(model, "gradcam", "features")
    maps = explainer(x, targets)
    noise = Noise("uniform", 0.05, seed=4)
    n = 4
    draws = noise.sample(x, n).flatten(0, 1)

    def explain(inputs, target):
        images = inputs[0] if isinstance(inputs, tuple) else inputs
        return (explainer(images, target.view(-1, 1)),)

    ours = max_sensitivity(explainer, x, maps, targets, noise=noise, n_samples=n,
                           relative=relative, batch_size=5)
    if relative:
        theirs = captum_metrics.sensitivity_max(
            explain, x, perturb_func=lambda inputs: inputs + draws, n_perturb_samples=n,
            target=targets[:, 0])
        assert torch.allclose(ours[:, 0], theirs, rtol=1e-5, atol=1e-6)
    else:  # captum has no absolute variant: a loop
        for b in range(3):
            perturbed = explainer(x[b] + draws[b * n : (b + 1) * n], targets[b].expand(n, 1))
            expected = max(float((perturbed[j] - maps[b]).norm()) for j in range(n))
            assert ours[b, 0].item() == pytest.approx(expected, rel=1e-5)
    assert ours.min() > 0  # the noise moves Grad-CAM's maps at least a little
