"""Triplet grad-weights, top-M, the map, and the direct explanations, against independent
loop computations (one triplet, one image at a time, plain autograd on the activation)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import camkit
from camkit import capture
from camkit.embedding import (
    channel_map,
    dense_weights,
    explain_similarity,
    gradcam_weights,
    gradcampp_weights,
    top_m,
    triplet_gradcam,
    triplet_weights,
)
from tests.embedding_fixtures import (
    MARGIN,
    TinyEmbedding,
    labelled_images,
    loop_gradient,
    tiny_embedding,
)
from tests.reference import gradcam_plus_plus_alpha_weights


def loop_gradcampp(acts: Tensor, grad: Tensor, sign: float) -> Tensor:
    """Grad-CAM++ weights (ALGORITHMS §3.3 closed form) position by position."""
    weights = torch.zeros(acts.shape[0])
    for k in range(acts.shape[0]):
        total = float(acts[k].sum())
        for i in range(acts.shape[1]):
            for j in range(acts.shape[2]):
                g = sign * float(grad[k, i, j])
                denominator = 2 * g * g + total * g ** 3
                alpha = g * g / denominator if denominator != 0 else 0.0
                weights[k] += alpha * max(g, 0.0)
    return weights


@pytest.fixture
def setup() -> tuple[TinyEmbedding, Tensor, Tensor]:
    model = tiny_embedding()
    images, labels = labelled_images()
    return model, images, labels


def _pass(model: TinyEmbedding, x: Tensor, pos: Tensor, neg: Tensor, **kw: object):
    """triplet_weights with partner images stacked into the same forward pass."""
    b, t = pos.shape[:2]

    def partners(e: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        rest = e[b:].unflatten(0, (2, b, t))
        return e[:b], rest[0], rest[1]

    with capture.borrowed(model):
        return triplet_weights(model, model.features, "features",
                               torch.cat([x, pos.flatten(0, 1), neg.flatten(0, 1)]), partners,
                               margin=MARGIN, **kw)


@pytest.mark.parametrize("hinge", [True, False])
def test_per_triplet_gradcam_weights_match_a_loop(setup, hinge: bool) -> None:
    model, x, _ = setup
    pos, neg = x[[3, 4]].view(1, 2, 3, 12, 12), x[[1, 2]].view(1, 2, 3, 12, 12)
    result = _pass(model, x[:1], pos, neg, hinge=hinge, variant="gradcam")
    assert result.weights.shape == (1, 2, 8)
    for t in range(2):
        _, grad = loop_gradient(model, x[0], pos[0, t], neg[0, t], hinge)
        torch.testing.assert_close(result.weights[0, t], -grad.mean(dim=(1, 2)),
                                   atol=1e-6, rtol=1e-4)


def test_grad_weights_of_the_mean_loss_are_the_mean_of_per_triplet_weights(setup) -> None:
    model, x, _ = setup
    pos, neg = x[3:9].view(2, 3, 3, 12, 12), x[[1, 2, 4, 5, 7, 8]].view(2, 3, 3, 12, 12)
    per = _pass(model, x[:2], pos, neg, hinge=False)
    mean = _pass(model, x[:2], pos, neg, hinge=False, per_triplet=False)
    torch.testing.assert_close(mean.weights[:, 0], per.weights.mean(dim=1), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_gradcampp_weights_match_a_loop(setup, sign: float) -> None:
    model, x, _ = setup
    result = _pass(model, x[:1], x[3:4, None], x[1:2, None], hinge=False, variant="gradcam++",
                   sign=sign)
    acts, grad = loop_gradient(model, x[0], x[3], x[1], hinge=False)
    torch.testing.assert_close(result.weights[0, 0], loop_gradcampp(acts, grad, sign),
                               atol=1e-6, rtol=1e-4)


def test_gradcampp_weights_equal_the_papers_alpha_form() -> None:
    g = torch.Generator().manual_seed(5)
    acts, grads = torch.rand(2, 4, 3, 3, generator=g), torch.randn(2, 6, 4, 3, 3, generator=g)
    grads[0, 0, 0, 0, 0] = 0.0
    for sign in (-1.0, 1.0):
        reference = gradcam_plus_plus_alpha_weights(acts, sign * grads)
        torch.testing.assert_close(gradcampp_weights(acts, grads, sign), reference)


def test_gradcam_weights_are_the_signed_spatial_mean() -> None:
    grads = torch.arange(24.0).view(1, 1, 2, 3, 4)
    assert gradcam_weights(grads).tolist() == [[[-5.5, -17.5]]]
    assert gradcam_weights(grads, 1.0).tolist() == [[[5.5, 17.5]]]


def test_top_m_keeps_the_largest_signed_weights() -> None:
    w = torch.tensor([[0.5, -3.0, 2.0, 0.1]])
    channels, values = top_m(w, 2)
    assert channels.tolist() == [[2, 0]] and values.tolist() == [[2.0, 0.5]]
    assert top_m(w, None)[0].tolist() == [[2, 0, 3, 1]]
    assert top_m(w, 10)[0].shape == (1, 4)
    assert dense_weights(channels, values, 4).tolist() == [[0.5, 0.0, 2.0, 0.0]]
    with pytest.raises(ValueError, match="positive channel count"):
        top_m(w, 0)


def test_channel_map_matches_a_loop() -> None:
    g = torch.Generator().manual_seed(6)
    acts = torch.rand(2, 5, 3, 3, generator=g)
    channels, values = torch.tensor([[4, 1], [0, 2]]), torch.tensor([[0.5, -1.0], [2.0, 3.0]])
    got = channel_map(acts, channels, values)
    for b in range(2):
        expected = sum(float(values[b, m]) * acts[b, int(channels[b, m])] for m in range(2))
        torch.testing.assert_close(got[b, 0], expected)


def test_triplet_gradcam_maps_and_weights(setup) -> None:
    model, x, _ = setup
    before = [p.requires_grad for p in model.parameters()]
    expl = triplet_gradcam(model, "features", x[:2], x[3:5], x[1:3], margin=MARGIN, top_m=3,
                           hinge=False)
    assert list(expl) == ["triplet-gradcam"] and expl["triplet-gradcam"].shape == (2, 1, 12, 12)
    weights = expl.details["weights"]
    for b in range(2):
        acts, grad = loop_gradient(model, x[b], x[3 + b], x[1 + b], hinge=False)
        beta = -grad.mean(dim=(1, 2))
        keep = beta.topk(3).indices
        torch.testing.assert_close(weights[b, keep], beta[keep], atol=1e-6, rtol=1e-4)
        assert int((weights[b] != 0).sum()) == 3
        raw = (beta[keep, None, None] * acts[keep]).sum(0)
        torch.testing.assert_close(expl.raw["triplet-gradcam"][b, 0], raw, atol=1e-5, rtol=1e-4)
    assert [p.requires_grad for p in model.parameters()] == before
    assert all(p.grad is None for p in model.parameters())


def test_triplet_gradcam_averages_over_t_triplets(setup) -> None:
    model, x, _ = setup
    pos, neg = x[3:7].view(1, 4, 3, 12, 12), x[[1, 2, 4, 5]].view(1, 4, 3, 12, 12)
    expl = triplet_gradcam(model, "features", x[0], pos[0][None], neg[0][None], margin=MARGIN,
                           hinge=False)
    loops = [-loop_gradient(model, x[0], pos[0, t], neg[0, t], False)[1].mean(dim=(1, 2))
             for t in range(4)]
    torch.testing.assert_close(expl.details["weights"][0], torch.stack(loops).mean(0),
                               atol=1e-6, rtol=1e-4)
    assert expl.details["losses"].shape == (1, 4)


def test_inactive_triplets_warn_and_give_blank_maps(setup) -> None:
    model, x, _ = setup
    with pytest.warns(RuntimeWarning, match="inactive"):
        expl = triplet_gradcam(model, "features", x[:1], x[:1], x[1:2], margin=-10.0)
    assert float(expl["triplet-gradcam"].abs().max()) == 0.0


def test_triplet_gradcam_refuses_mismatched_partners(setup) -> None:
    model, x, _ = setup
    with pytest.raises(ValueError, match="positive must be"):
        triplet_gradcam(model, "features", x[:2], x[:3], x[:2])
    with pytest.raises(ValueError, match="one negative per positive"):
        triplet_gradcam(model, "features", x[:1], x[None, 1:3], x[None, 3:4])
    with pytest.raises(ValueError, match="unknown variant"):
        triplet_gradcam(model, "features", x[:1], x[1:2], x[2:3], variant="cam")


def test_explain_similarity_explains_both_directions(setup) -> None:
    model, x, _ = setup
    expl = explain_similarity(model, x[:2], x[2:4], ["gradcam"], "features")
    assert expl["gradcam"].shape == (4, 1, 12, 12)
    with torch.no_grad():
        e = model(x[:4])
    cosine = torch.nn.functional.cosine_similarity(e[:2], e[2:4])
    torch.testing.assert_close(expl.scores[:, 0], torch.cat([cosine, cosine]))
    for row, (image, partner) in enumerate([(0, 2), (1, 3), (2, 0), (3, 1)]):
        alone = camkit.explain(model, x[image:image + 1],
                               camkit.targets.Similarity(e[partner:partner + 1]), ["gradcam"],
                               "features")
        torch.testing.assert_close(expl.raw["gradcam"][row], alone.raw["gradcam"][0])
