"""Segmentation targets: "this class inside this region" on (B, C, H, W) logits, against
literal autograd references, and on torchvision's dict-output segmentation models."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import Tensor, nn

import camkit
from camkit.segmentation import SemanticSegmentationTarget


class TinySegmenter(nn.Module):
    """conv → ReLU ("body", 4×4 after a stride) → 1×1 conv to 3 classes → upsample; returns
    ``{"out": (B, 3, 8, 8)}`` like torchvision's models."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, stride=2), nn.ReLU())
        self.classifier = nn.Conv2d(6, 3, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        logits = self.classifier(self.body(x))
        return {"out": nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear")}


@pytest.fixture
def segmenter() -> TinySegmenter:
    torch.manual_seed(3)
    return TinySegmenter().eval()


def reference_gradcam(model: TinySegmenter, x: Tensor, category: int, mask: Tensor) -> Tensor:
    """Grad-CAM of ``Σ mask · z_category`` at ``body``, one image at a time, by autograd."""
    maps = []
    for image, image_mask in zip(x, mask, strict=True):
        acts = model.body(image[None]).detach().requires_grad_(True)
        logits = nn.functional.interpolate(model.classifier(acts), size=x.shape[-2:],
                                           mode="bilinear")
        (grads,) = torch.autograd.grad((logits[0, category] * image_mask).sum(), acts)
        weights = grads.mean(dim=(-2, -1), keepdim=True)
        maps.append((weights * acts).sum(dim=1).clamp(min=0).detach())
    return torch.stack(maps)  # (B, 1, 4, 4)


def test_gradcam_of_a_masked_class_matches_autograd(segmenter: TinySegmenter) -> None:
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    mask = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(5)) > 0.5
    expl = camkit.explain(segmenter, x, SemanticSegmentationTarget(1, mask), "gradcam",
                          layer="body")
    expected = reference_gradcam(segmenter, x, 1, mask.float())
    torch.testing.assert_close(expl.raw["gradcam"].clamp(min=0), expected)


def test_an_empty_region_is_named_in_a_warning(segmenter: TinySegmenter) -> None:
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    predicted = segmenter(x)["out"].argmax(dim=1)
    absent = next(c for c in range(3) if not (predicted == c).any())
    with pytest.warns(RuntimeWarning, match=rf"class\(es\) \[{absent}\]: predicted nowhere in "
                                            r"2 of 2 images"):
        SemanticSegmentationTarget([absent]).bind(segmenter(x))
    with pytest.warns(RuntimeWarning, match=r"\[0, 2\]: an empty region in 1 of 2"):
        mask = torch.zeros(2, 8, 8, dtype=torch.bool)
        mask[0, :2] = True
        SemanticSegmentationTarget([0, 2], mask).bind(segmenter(x))


def test_scores_sum_the_class_logits_over_the_region(segmenter: TinySegmenter) -> None:
    x = torch.randn(2, 3, 8, 8)
    logits = segmenter(x)["out"]
    box = SemanticSegmentationTarget([0, 2], (2, 1, 6, 4))  # x 2..5, y 1..3
    expected = logits[:, [0, 2], 1:4, 2:6].sum(dim=(-2, -1))
    torch.testing.assert_close(box.scores({"out": logits}), expected)
    predicted = SemanticSegmentationTarget(2)
    region = logits.argmax(dim=1) == 2
    torch.testing.assert_close(predicted.scores({"out": logits})[:, 0],
                               (logits[:, 2] * region).sum(dim=(-2, -1)))


def test_predicted_region_is_fixed_on_the_unperturbed_output(segmenter: TinySegmenter) -> None:
    x = torch.randn(2, 3, 8, 8)
    original, other = segmenter(x)["out"], segmenter(torch.randn(2, 3, 8, 8))["out"]
    bound = SemanticSegmentationTarget(1).bind({"out": original})
    region = original.argmax(dim=1) == 1  # not the other output's argmax
    rows = torch.tensor([1, 1, 0])
    expected = (other[[0, 1, 0], 1] * region[rows]).sum(dim=(-2, -1))
    torch.testing.assert_close(bound.scores({"out": other[[0, 1, 0]]}, rows)[:, 0], expected)


def test_a_mask_at_another_resolution_is_resized_by_nearest_neighbour() -> None:
    logits = torch.randn(1, 2, 4, 4)
    fine = torch.zeros(8, 8, dtype=torch.bool)
    fine[:4, :4] = True  # the top-left quarter, at twice the output's resolution
    scores = SemanticSegmentationTarget(1, fine).scores(logits)
    torch.testing.assert_close(scores[:, 0], logits[:, 1, :2, :2].sum(dim=(-2, -1)))


def test_several_categories_give_one_map_each(segmenter: TinySegmenter) -> None:
    x = torch.randn(2, 3, 8, 8)
    box = (0, 0, 5, 6)
    both = camkit.explain(segmenter, x, SemanticSegmentationTarget([0, 2], box), "gradcam",
                          layer="body")
    assert not both.constant["gradcam"].any()
    for k, category in enumerate([0, 2]):
        alone = camkit.explain(segmenter, x, SemanticSegmentationTarget(category, box),
                               "gradcam", layer="body")
        torch.testing.assert_close(both["gradcam"][:, k:k + 1], alone["gradcam"])


@pytest.mark.parametrize(("name", "layer"), [
    ("lraspp_mobilenet_v3_large", "backbone.12"),
    ("deeplabv3_mobilenet_v3_large", "backbone.16"),
])
def test_torchvision_segmentation_models(name: str, layer: str) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models.segmentation, name)(
        weights=None, weights_backbone=None, num_classes=3).eval()
    x = torch.rand(1, 3, 64, 64)
    box = SemanticSegmentationTarget(1, (8, 8, 40, 40))
    expl = camkit.explain(model, x, box, ["gradcam", "eigencam", "ablationcam"], layer=layer)
    assert not expl.constant["gradcam"].any()
    for method in expl:
        maps = expl[method]
        assert maps.shape == (1, 1, 64, 64) and torch.isfinite(maps).all()
        assert 0 <= float(maps.min()) and float(maps.max()) <= 1
