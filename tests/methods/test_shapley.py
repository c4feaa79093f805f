"""Shapley-CAM against the full Hessian of a small head, and its identity: after a piecewise
linear head the Hessian vanishes and Shapley-CAM is Grad-CAM."""

from __future__ import annotations

import torch

import camkit

TOL = dict(atol=1e-5, rtol=1e-5)


def log_probability(cls: int):
    """The log-softmax of class ``cls``: smooth, so its Hessian does not vanish."""
    return lambda outputs: outputs.log_softmax(dim=1)[:, cls]


def test_shapleycam_matches_the_full_hessian(deep, images):
    cls = 2
    expl = camkit.explain(deep, images, log_probability(cls), ["shapleycam", "gradcam"], "body")
    assert (expl.raw["shapleycam"] - expl.raw["gradcam"]).abs().max() > 1e-4  # H A matters
    acts = deep.body(images).detach()
    for b in range(3):
        def score(a, b=b):
            return deep.head(a[None]).log_softmax(dim=1)[0, cls]

        a = acts[b].double()
        deep.double()
        try:
            grad = torch.autograd.functional.jacobian(score, a)
            hessian = torch.autograd.functional.hessian(score, a)
        finally:
            deep.float()
        product = (hessian.reshape(a.numel(), a.numel()) @ a.flatten()).reshape(a.shape)
        weights = (grad - 0.5 * product).mean(dim=(1, 2))
        expected = torch.einsum("c,chw->hw", weights, a).float()
        torch.testing.assert_close(expl.raw["shapleycam"][b, 0], expected, **TOL)


def test_after_a_piecewise_linear_head_it_is_gradcam(deep, images):
    expl = camkit.explain(deep, images, [[0, 3]] * 3, ["shapleycam", "gradcam"], "body")
    torch.testing.assert_close(expl.raw["shapleycam"], expl.raw["gradcam"], **TOL)
