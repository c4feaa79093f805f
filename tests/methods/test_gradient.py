"""Each gradient method against a slow, loop-based computation, plus the known identities."""

from __future__ import annotations

import pytest
import torch

import camkit
from camkit.methods import gradient
from tests.reference import gradcam_plus_plus_alpha_weights

TOL = dict(atol=1e-5, rtol=1e-5)


def slow_activation_and_gradients(model, layer, x, targets):
    """A (C, h, w) and, per (image, target), dA via a separate backward each: plain loops."""
    acts, grads = [], []
    for b in range(x.shape[0]):
        store: dict = {}
        handle = layer.register_forward_hook(lambda m, i, o, store=store: store.update(a=o))
        logits = model(x[b : b + 1])
        handle.remove()
        acts.append(store["a"][0].detach())
        per_target = []
        for c in targets[b]:
            (g,) = torch.autograd.grad(logits[0, c], store["a"], retain_graph=True)
            per_target.append(g[0])
        grads.append(per_target)
    return acts, grads


def slow_maps(method, act, grad):
    """The papers' formulas with explicit loops over channels and positions: (h, w)."""
    c, h, w = act.shape
    z = h * w
    out = torch.zeros(h, w)
    if method in ("layercam", "hirescam", "gradcam-elementwise"):
        for k in range(c):
            for i in range(h):
                for j in range(w):
                    g = max(grad[k, i, j], 0.0) if method == "layercam" else grad[k, i, j]
                    product = g * act[k, i, j]
                    out[i, j] += max(product, 0.0) if method == "gradcam-elementwise" else product
        return out
    for k in range(c):
        if method == "gradcam":
            weight = sum(grad[k, i, j] for i in range(h) for j in range(w)) / z
        elif method == "xgradcam":
            total = sum(act[k, i, j] for i in range(h) for j in range(w))
            weight = sum(act[k, i, j] / (total + 1e-7) * grad[k, i, j]
                         for i in range(h) for j in range(w))
        else:  # gradcam++, eq. 19 with Y = exp(s)
            total = sum(act[k, a, b] for a in range(h) for b in range(w))
            weight = 0.0
            for i in range(h):
                for j in range(w):
                    g = grad[k, i, j]
                    den = 2 * g**2 + total * g**3
                    alpha = g**2 / den if den != 0 else 0.0
                    weight += alpha * max(g, 0.0)
        out += weight * act[k]
    return out


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam",
                                    "gradcam-elementwise"])
@pytest.mark.parametrize("model_name", ["tiny", "deep"])
def test_method_matches_slow_loops(method, model_name, request, images):
    model = request.getfixturevalue(model_name)
    layer = model.features if model_name == "tiny" else model.body
    targets = [[0, 2], [1, 3], [3, 0]]
    expl = camkit.explain(model, images, targets, methods=method, layer=layer)
    acts, grads = slow_activation_and_gradients(model, layer, images, targets)
    for b in range(images.shape[0]):
        for k in range(2):
            expected = slow_maps(method, acts[b].double(), grads[b][k].double()).float()
            torch.testing.assert_close(expl.raw[method][b, k], expected, **TOL)


def test_gradcam_equals_cam_up_to_scale_on_gap_fc(tiny, images):
    expl = camkit.explain(tiny, images, [[0, 4]] * 3, methods=["cam", "gradcam"], layer="features")
    z = expl.raw["cam"].shape[-1] * expl.raw["cam"].shape[-2]
    torch.testing.assert_close(expl.raw["gradcam"] * z, expl.raw["cam"], **TOL)
    torch.testing.assert_close(expl["gradcam"], expl["cam"], atol=1e-4, rtol=0)


def test_cam_matches_fc_weights_by_hand(tiny, images):
    expl = camkit.explain(tiny, images, 3, methods="cam", layer="features")
    acts = tiny.features(images)
    expected = torch.einsum("c,bchw->bhw", tiny.fc.weight[3], acts)
    torch.testing.assert_close(expl.raw["cam"][:, 0], expected.detach(), **TOL)


def test_gradcam_plus_plus_with_uniform_alpha_is_gradcam_of_positive_gradients():
    gen = torch.Generator().manual_seed(0)
    acts = torch.rand(2, 3, 4, 5, generator=gen)
    grads = torch.randn(2, 2, 3, 4, 5, generator=gen)
    uniform = torch.full_like(grads, 1 / 20)
    weights = gradient.positive_gradient_weights(uniform, grads)
    torch.testing.assert_close(
        gradient.weighted_sum(weights, acts), gradient.gradcam(acts, grads.clamp(min=0)), **TOL
    )


def test_gradcam_plus_plus_weights_equal_the_papers_alpha_form():
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(2, 3, 4, 5, generator=gen)  # signed: some channel sums are negative
    grads = torch.randn(2, 2, 3, 4, 5, generator=gen)
    grads[0, 0, 0, :2] = 0.0
    alpha = gradient.gradcam_plus_plus_alpha(acts, grads)
    assert (alpha[0, 0, 0, :2] == 0).all()  # α is 0 where g = 0, as the paper's 0/0
    torch.testing.assert_close(gradient.positive_gradient_weights(alpha, grads),
                               gradcam_plus_plus_alpha_weights(acts, grads), **TOL)


def test_gradcam_plus_plus_closed_form_equals_general_formula_with_autograd():
    """On a GAP → FC head with Y = exp(s), take ∂²Y/∂A² and ∂³Y/∂A³ (diagonal entries) by
    autograd and plug them into the general α of eq. 19."""
    gen = torch.Generator().manual_seed(3)
    c, h, w = 3, 2, 2
    acts = torch.rand(1, c, h, w, generator=gen, dtype=torch.float64)
    fc_w = torch.randn(c, generator=gen, dtype=torch.float64)

    def y_of(a):
        return torch.exp((fc_w * a.mean(dim=(-2, -1))).sum() + 0.3)

    a = acts.clone().requires_grad_(True)
    (d1,) = torch.autograd.grad(y_of(a), a, create_graph=True)
    d2, d3 = torch.zeros_like(acts), torch.zeros_like(acts)
    for idx in torch.cartesian_prod(*(torch.arange(n) for n in acts.shape)):
        idx = tuple(idx.tolist())
        (g2,) = torch.autograd.grad(d1[idx], a, create_graph=True)
        (g3,) = torch.autograd.grad(g2[idx], a, retain_graph=True)
        d2[idx], d3[idx] = g2[idx], g3[idx]
    channel_sum = acts.sum(dim=(-2, -1), keepdim=True)
    alpha = d2 / (2 * d2 + channel_sum * d3)
    general = (alpha * d1.detach().clamp(min=0)).sum(dim=(-2, -1))  # (1, C)

    grads = (fc_w / (h * w))[None, None, :, None, None].expand(1, 1, c, h, w)
    closed_alpha = gradient.gradcam_plus_plus_alpha(acts, grads)
    closed = gradient.positive_gradient_weights(closed_alpha, grads)[:, 0]
    # The exact weights carry the positive factor Y = exp(s) that the closed form drops.
    torch.testing.assert_close(general / y_of(acts), closed, atol=1e-10, rtol=1e-8)


ALL_GRADIENT = ["cam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam",
                "gradcam-elementwise", "guided-backprop", "guided-gradcam"]


def test_k_targets_in_one_call_equal_k_separate_calls(tiny, images):
    together = camkit.explain(tiny, images, [[1, 4]] * 3, methods=ALL_GRADIENT, layer="features")
    for k, cls in enumerate([1, 4]):
        alone = camkit.explain(tiny, images, cls, methods=ALL_GRADIENT, layer="features")
        for m in ALL_GRADIENT:
            torch.testing.assert_close(together.raw[m][:, k], alone.raw[m][:, 0], **TOL)


def test_batch_equals_single_image_calls(deep, images):
    batch = camkit.explain(deep, images, [2, 0, 1], methods=ALL_GRADIENT[1:], layer="body")
    for b, cls in enumerate([2, 0, 1]):
        single = camkit.explain(deep, images[b], cls, methods=ALL_GRADIENT[1:], layer="body")
        for m in ALL_GRADIENT[1:]:
            torch.testing.assert_close(batch[m][b], single[m][0], **TOL)


def test_maps_are_normalised_float32_at_input_size(tiny, images):
    expl = camkit.explain(tiny, images, methods=ALL_GRADIENT, layer="features")
    for m in ALL_GRADIENT:
        assert expl[m].shape == (3, 1, 8, 8) and expl[m].dtype == torch.float32
        assert expl[m].min() >= 0 and expl[m].max() <= 1
    assert expl.targets.shape == (3, 1)
    assert torch.equal(expl.targets[:, 0], expl.outputs.argmax(1))
