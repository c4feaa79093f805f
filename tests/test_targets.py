"""Finer-CAM's comparison target against a literal per-image computation, its identities
(``alpha=0`` is the class score, so Finer-CAM with it is Grad-CAM), and its binding for
methods that re-score perturbed inputs."""

from __future__ import annotations

import pytest
import torch

import camkit
from camkit.targets import Finer

TOL = dict(atol=1e-5, rtol=1e-5)


def slow_finer(logits: torch.Tensor, ranks, alpha: float) -> torch.Tensor:
    """Per image: sort the other classes by |y_j − y_c| (c = top-1), weight the gaps."""
    scores = []
    for y in logits:
        c, values = int(y.argmax()), y.detach().tolist()
        others = sorted((j for j in range(len(y)) if j != c),
                        key=lambda j, v=values, c=c: abs(v[j] - v[c]))
        compared = [others[r - 1] for r in ranks]
        p = y.softmax(dim=0)
        numerator = sum(p[j] * (y[c] - alpha * y[j]) for j in compared)
        scores.append(numerator / sum(p[j] for j in compared))
    return torch.stack(scores)[:, None]


def test_finer_scores_match_a_literal_computation():
    logits = torch.randn(4, 9, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(Finer().scores(logits), slow_finer(logits, (1, 2, 3), 1.0), **TOL)
    torch.testing.assert_close(Finer(ranks=(1, 4), alpha=0.5).scores(logits),
                               slow_finer(logits, (1, 4), 0.5), **TOL)


def test_finer_cam_gradients_match_autograd_of_the_literal_score(deep, images):
    expl = camkit.explain(deep, images, Finer(), "gradcam", "body")
    acts = deep.body(images).detach().requires_grad_(True)
    (grads,) = torch.autograd.grad(slow_finer(deep.head(acts), (1, 2, 3), 1.0).sum(), acts)
    expected = torch.einsum("bc,bchw->bhw", grads.mean(dim=(2, 3)), acts.detach())
    torch.testing.assert_close(expl.raw["gradcam"][:, 0], expected, **TOL)


def test_alpha_zero_is_the_class_score_and_finer_cam_is_gradcam(deep, images):
    finer = camkit.explain(deep, images, Finer(alpha=0.0), "gradcam", "body")
    plain = camkit.explain(deep, images, None, "gradcam", "body")
    torch.testing.assert_close(finer.scores, plain.scores, **TOL)
    torch.testing.assert_close(finer.raw["gradcam"], plain.raw["gradcam"], **TOL)


def test_perturbation_methods_need_the_classes_bound(tiny, images):
    with pytest.raises(ValueError, match="bound"):
        camkit.explain(tiny, images, Finer(ranks=(1,)), "occlusion", "features", window=4,
                       fill=0.0)
    bound = Finer(ranks=(1,)).bound(tiny(images))
    expl = camkit.explain(tiny, images, bound, "occlusion", "features", window=4)
    torch.testing.assert_close(expl.scores, Finer(ranks=(1,)).scores(tiny(images)).detach(),
                               **TOL)
