"""Guided backpropagation and Guided Grad-CAM against the classic module-swapping version."""

from __future__ import annotations

import copy

import torch
from torch import nn

import camkit


class _ClassicGuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0).to(grad.dtype)


class ClassicGuidedReLU(nn.Module):
    def forward(self, x):
        return _ClassicGuidedReLU.apply(x)


def classic_guided_gradients(model, x, cls):
    """Deep-copy the model, swap every nn.ReLU, backprop one image and one class at a time."""
    guided = copy.deepcopy(model)
    for _name, module in list(guided.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, child_name, ClassicGuidedReLU())
    xi = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(guided(xi)[0, cls], xi)
    return g[0]


def test_guided_backprop_matches_module_swapping(tiny, images):
    targets = [[0, 3], [2, 1], [4, 4]]
    expl = camkit.explain(tiny, images, targets, methods="guided-backprop", layer="features")
    full = expl.details["guided-backprop"]["gradients"]
    for b in range(3):
        for k, cls in enumerate(targets[b]):
            expected = classic_guided_gradients(tiny, images[b : b + 1], cls)
            torch.testing.assert_close(full[b, k], expected, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(expl.raw["guided-backprop"][b, k],
                                       expected.abs().amax(0), atol=1e-6, rtol=1e-5)


def test_guided_gradcam_is_guided_backprop_times_upsampled_gradcam(tiny, images):
    expl = camkit.explain(tiny, images, methods=["gradcam", "guided-backprop", "guided-gradcam"],
                          layer="features")
    cam = torch.nn.functional.interpolate(expl.raw["gradcam"].clamp(min=0), size=(8, 8),
                                          mode="bilinear", align_corners=False)
    torch.testing.assert_close(expl.raw["guided-gradcam"], expl.raw["guided-backprop"] * cam)


def test_guided_relu_does_not_change_the_gradients_of_other_methods(tiny, images):
    with_guided = camkit.explain(tiny, images, methods=["gradcam", "guided-backprop"],
                                 layer="features")
    alone = camkit.explain(tiny, images, methods="gradcam", layer="features")
    torch.testing.assert_close(with_guided.raw["gradcam"], alone.raw["gradcam"])


def test_functional_relu_is_guided_too(images):
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = Functional()
    expl = camkit.explain(model, images[:1], 1, methods="guided-backprop", layer="conv")
    x = images[:1].clone().requires_grad_(True)
    pre = model.conv(x)
    out = model.fc(_ClassicGuidedReLU.apply(pre).mean(dim=(2, 3)))
    (g,) = torch.autograd.grad(out[0, 1], x)
    torch.testing.assert_close(expl.details["guided-backprop"]["gradients"][0, 0], g[0])


def test_relu6_modules_are_guided(images):
    """nn.ReLU6 runs as hardtanh(x, 0, 6): guided like the classic swap of a clamp to [0, 6]
    whose backward keeps positive gradients where 0 < x < 6."""

    class Clamp6(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp(0, 6)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad.clamp(min=0) * ((x > 0) & (x < 6)).to(grad.dtype)

    class Swapped(nn.Module):
        def forward(self, x):
            return Clamp6.apply(x)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU6(), nn.Conv2d(6, 5, 3, padding=1),
                          nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4))
    with torch.no_grad():
        model[0].weight.mul_(8)  # some activations above 6
    expl = camkit.explain(model, images, [[1], [3], [0]], methods="guided-backprop", layer="2")
    swapped = copy.deepcopy(model)
    swapped[1], swapped[3] = Swapped(), Swapped()
    for b, cls in enumerate([1, 3, 0]):
        xi = images[b:b + 1].clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(swapped(xi)[0, cls], xi)
        torch.testing.assert_close(expl.details["guided-backprop"]["gradients"][b, 0],
                                   expected[0], atol=1e-6, rtol=1e-5)
