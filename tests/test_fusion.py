"""Several layers in one call (``layer=[...]``): each layer's maps equal a one-layer call, the
fused map follows its formula, and it all comes from one forward and one backward pass."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.postprocess import minmax

LAYERS = ["body", "head.1"]  # TinyDeepHead: a Tanh block (8×8), then a conv + ReLU (8×8)
METHODS = ["gradcam", "layercam", "gradcam++", "eigencam", "ablationcam", "guided-gradcam"]


class CountingDeepHead(nn.Module):
    """TinyDeepHead's layers with counters of forward passes and of backward passes through
    the first layer's output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.body, self.head = model.body, model.head
        self.forwards, self.backwards = 0, 0

    def forward(self, x: Tensor) -> Tensor:
        self.forwards += 1
        features = self.body(x) * 1.0
        if features.requires_grad:
            features.register_hook(self._count_backward)
        return self.head(features)

    def _count_backward(self, grad: Tensor) -> None:
        self.backwards += 1


def test_each_layer_matches_its_own_call(deep: nn.Module, images: Tensor) -> None:
    targets = [[0, 1], [2, 3], [1, 0]]
    both = camkit.explain(deep, images, targets, METHODS, layer=LAYERS)
    assert both.layers == tuple(LAYERS) and both.layer == "body+head.1"
    for name in LAYERS:
        alone = camkit.explain(deep, images, targets, METHODS, layer=name)
        for method in METHODS:
            torch.testing.assert_close(both.per_layer[name][method], alone[method])
            torch.testing.assert_close(both.per_layer[name].raw[method], alone.raw[method])


def test_layer_order_does_not_matter(deep: nn.Module, images: Tensor) -> None:
    forward = camkit.explain(deep, images, 1, "gradcam", layer=LAYERS)
    backward = camkit.explain(deep, images, 1, "gradcam", layer=LAYERS[::-1])
    for name in LAYERS:
        torch.testing.assert_close(forward.per_layer[name]["gradcam"],
                                   backward.per_layer[name]["gradcam"])


def test_mean_fusion_is_the_normalised_mean_of_normalised_maps(
    deep: nn.Module, images: Tensor
) -> None:
    expl = camkit.explain(deep, images, 2, "gradcam", layer=LAYERS)
    per_layer = [expl.per_layer[name]["gradcam"] for name in LAYERS]
    expected = torch.empty_like(per_layer[0])
    for b in range(images.shape[0]):  # slow: one map at a time
        mean = (per_layer[0][b, 0] + per_layer[1][b, 0]) / 2
        expected[b, 0] = (mean - mean.min()) / (mean.max() - mean.min() + 1e-7)
    torch.testing.assert_close(expl["gradcam"], expected)


def test_layercam_fusion_is_the_maximum_of_tanh_scaled_maps(
    deep: nn.Module, images: Tensor
) -> None:
    expl = camkit.explain(deep, images, 0, "layercam", layer=LAYERS, fusion="layercam")
    scaled = [torch.tanh(2 * expl.per_layer[name]["layercam"]) for name in LAYERS]
    expected, _ = minmax(torch.maximum(*scaled))
    torch.testing.assert_close(expl["layercam"], expected)
    torch.testing.assert_close(expl.raw["layercam"], torch.maximum(*scaled))


@pytest.mark.parametrize("k", [1, 3])
def test_one_forward_and_one_backward_pass(deep: nn.Module, images: Tensor, k: int) -> None:
    model = CountingDeepHead(deep)
    targets = torch.arange(k).repeat(images.shape[0], 1)
    camkit.explain(model, images, targets, ["gradcam", "layercam"], layer=["body", "head.0"])
    assert (model.forwards, model.backwards) == (1, 1)


def test_fused_maps_lie_in_the_unit_interval(deep: nn.Module, images: Tensor) -> None:
    expl = camkit.explain(deep, images, None, ["gradcam", "hirescam"], layer=LAYERS)
    for method in expl:
        assert expl[method].shape == (3, 1, 8, 8)
        assert float(expl[method].min()) >= 0 and float(expl[method].max()) <= 1


def test_clear_errors(deep: nn.Module, images: Tensor) -> None:
    with pytest.raises(ValueError, match="names no layer"):
        camkit.explain(deep, images, layer=[])
    with pytest.raises(ValueError, match="unknown fusion"):
        camkit.explain(deep, images, layer=LAYERS, fusion="median")
    with pytest.raises(ValueError, match="no layer named"):
        camkit.explain(deep, images, layer=["body", "nope"])
