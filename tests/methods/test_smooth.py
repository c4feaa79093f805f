"""SmoothGrad-CAM++ against a slow per-image, per-sample computation, and its identities:
without noise it is Grad-CAM++, and its batches do not change it."""

from __future__ import annotations

import pytest
import torch

import camkit
from tests.methods.test_gradient import slow_activation_and_gradients

TOL = dict(atol=1e-5, rtol=1e-5)


def slow_smooth_weight(act: torch.Tensor, grads: list[torch.Tensor]) -> torch.Tensor:
    """``(C, h, w)`` clean activation and one ``(C, h, w)`` gradient per noisy sample →
    ``(C,)`` weights, position by position as the paper writes them."""
    c, h, w = act.shape
    n = len(grads)
    weights = torch.zeros(c, dtype=act.dtype)
    for k in range(c):
        total = float(act[k].sum())
        for i in range(h):
            for j in range(w):
                d1 = sum(float(g[k, i, j]) for g in grads) / n
                d2 = sum(float(g[k, i, j]) ** 2 for g in grads) / n
                d3 = sum(float(g[k, i, j]) ** 3 for g in grads) / n
                den = 2 * d2 + total * d3
                alpha = d2 / den if d2 != 0 and den != 0 else 0.0
                weights[k] += alpha * max(d1, 0.0)
    return weights


def test_smoothgradcampp_matches_slow_noisy_loops(deep, images):
    targets, samples, std, seed = [[0, 2], [1, 3], [3, 0]], 3, 0.5, 4
    expl = camkit.explain(deep, images, targets, "smoothgradcam++", deep.body, seed=seed,
                          num_samples=samples, noise_std=std)
    generator = torch.Generator().manual_seed(seed)
    noisy = [images + std * torch.randn(images.shape, generator=generator)
             for _ in range(samples)]
    per_sample = [slow_activation_and_gradients(deep, deep.body, x, targets)[1] for x in noisy]
    acts = deep.body(images).detach().double()
    for b in range(3):
        for t in range(2):
            weights = slow_smooth_weight(acts[b], [grads[b][t].double() for grads in per_sample])
            expected = torch.einsum("c,chw->hw", weights, acts[b]).float()
            torch.testing.assert_close(expl.raw["smoothgradcam++"][b, t], expected, **TOL)


def test_without_noise_it_is_gradcam_plus_plus(deep, images):
    expl = camkit.explain(deep, images, [[1, 2]] * 3, ["smoothgradcam++", "gradcam++"], "body",
                          num_samples=2, noise_std=0.0)
    torch.testing.assert_close(expl.raw["smoothgradcam++"], expl.raw["gradcam++"], **TOL)


@pytest.mark.parametrize("batch_size", [1, 2, 5, 9])  # 3 images × 3 samples: batches span samples
def test_batches_do_not_change_the_maps_and_are_counted(tiny, images, batch_size):
    targets = [[2, 0], [1, 2], [0, 1]]
    whole = camkit.explain(tiny, images, targets, "smoothgradcam++", "features", num_samples=3)
    batched = camkit.explain(tiny, images, targets, "smoothgradcam++", "features",
                             num_samples=3, batch_size=batch_size)
    torch.testing.assert_close(whole.raw["smoothgradcam++"], batched.raw["smoothgradcam++"],
                               **TOL)
    assert batched.details["smoothgradcam++"] == {"evaluations": 9, "batch_size": batch_size}
