"""Per-box gradients of two-stage detectors through their RoI rows: equal to the plain batched
backward (the generic path) for batches, several layers, boxes that share a proposal, boxes
that match nothing and IoU-dependent scores; pooled again on the rows the scores read only."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import Tensor

import camkit
from camkit.capture import roi
from camkit.capture.roi import disjoint_groups
from camkit.detection import BoxScoreTarget
from tests.test_detection import SIZE, tiny_faster_rcnn

METHODS = ["gradcam", "hirescam"]


def explain_both(model: torch.nn.Module, x: Tensor, target: object, layer: object,
                 monkeypatch: pytest.MonkeyPatch) -> tuple[camkit.Explanation,
                                                           camkit.Explanation]:
    """The explanation through the RoI rows, and the generic one (the detector unrecognised)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant maps of boxes that match nothing
        fast = camkit.explain(model, x, target, METHODS, layer=layer)
        with monkeypatch.context() as patch:
            patch.setattr(roi, "roi_box_head", lambda *_: None)
            generic = camkit.explain(model, x, target, METHODS, layer=layer)
    return fast, generic


def assert_same_maps(fast: camkit.Explanation, generic: camkit.Explanation) -> None:
    assert "gradients" not in generic.details
    for method in METHODS:
        expected = generic.raw[method]
        scale = expected.abs().amax(dim=(-2, -1), keepdim=True).clamp(min=1e-12)
        torch.testing.assert_close(fast.raw[method] / scale, expected / scale, atol=1e-5,
                                   rtol=0)
    torch.testing.assert_close(fast.scores, generic.scores)


def detections(model: torch.nn.Module, x: Tensor) -> list[dict[str, Tensor]]:
    with torch.no_grad():
        return model(x)


@pytest.fixture
def images() -> Tensor:
    return torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


def test_a_batch_of_per_image_boxes_equals_the_batched_backward(
        images: Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_faster_rcnn()
    found = detections(model, images)
    boxes = torch.stack([d["boxes"][[0, 3, 3, 5]] for d in found])  # a box twice
    labels = torch.stack([d["labels"][[0, 3, 3, 5]] for d in found])
    boxes[1, 3], labels[1, 3] = torch.tensor([60.0, 60, 63, 63]), 1  # matches nothing
    target = BoxScoreTarget(boxes, labels, add_iou=True)  # the IoU reads the box regression
    fast, generic = explain_both(model, images, target, ["backbone.0", "backbone.2"],
                                 monkeypatch)
    for layer in ("backbone.0", "backbone.2"):
        assert fast.per_layer[layer].details["gradients"]["path"] == "roi-rows"
        assert_same_maps(fast.per_layer[layer], generic.per_layer[layer])
    rows = fast.per_layer["backbone.2"].details["gradients"]["rows"]
    assert rows == 5  # detections 0, 3, 5 of image 0, 0 and 3 of image 1: one row each
    assert bool(fast.constant["gradcam"][1, 3]) and not fast.constant["gradcam"][0].any()


def test_boxes_of_one_proposal_with_different_labels_take_separate_backwards(
        images: Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without box regression every class's detection of a proposal is the proposal itself:
    the same box under two labels is two scores of one row."""
    model = tiny_faster_rcnn()
    model.roi_heads.detections_per_img = 100  # every class's detection of every proposal
    with torch.no_grad():
        model.roi_heads.box_predictor.bbox_pred.weight.zero_()
        model.roi_heads.box_predictor.bbox_pred.bias.zero_()
    x = images[:1]
    found = detections(model, x)[0]
    box = found["boxes"][0]
    same = (found["boxes"] == box).all(dim=1)
    labels = found["labels"][same]
    assert len(labels) >= 2 and labels[0] != labels[1]
    target = BoxScoreTarget(torch.stack([box, box, found["boxes"][~same][0]]),
                            torch.stack([labels[0], labels[1], found["labels"][~same][0]]))
    fast, generic = explain_both(model, x, target, "backbone.2", monkeypatch)
    assert fast.details["gradients"] == {"path": "roi-rows", "rows": 2, "box_head_backwards": 2}
    assert_same_maps(fast, generic)


def test_nothing_matched_gives_zero_gradients_without_pooling_again(
        images: Tensor) -> None:
    model = tiny_faster_rcnn()
    target = BoxScoreTarget(torch.tensor([[60.0, 60, 63, 63]]), torch.tensor([1]))
    with pytest.warns(RuntimeWarning, match="constant"):
        expl = camkit.explain(model, images, target, "gradcam", layer="backbone.2")
    assert expl.details["gradients"] == {"path": "roi-rows", "rows": 0, "box_head_backwards": 0}
    assert (expl.raw["gradcam"] == 0).all()


def test_a_feature_pyramid_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several pyramid levels: each proposal pooled again from its own level."""
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3, box_score_thresh=0.0,
        min_size=128, max_size=128).eval()
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(4))
    found = detections(model, x)
    boxes = torch.stack([d["boxes"][:4] for d in found])
    labels = torch.stack([d["labels"][:4] for d in found])
    fast, generic = explain_both(model, x, BoxScoreTarget(boxes, labels), "backbone.body.12",
                                 monkeypatch)
    assert fast.details["gradients"]["path"] == "roi-rows"
    assert_same_maps(fast, generic)


def test_a_convolutional_box_head(images: Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_faster_rcnn(conv_head=True)
    found = detections(model, images[:1])[0]
    target = BoxScoreTarget(found["boxes"][:3], found["labels"][:3])
    fast, generic = explain_both(model, images[:1], target, "backbone.2", monkeypatch)
    assert fast.details["gradients"]["path"] == "roi-rows"
    assert_same_maps(fast, generic)


def test_disjoint_groups() -> None:
    rows = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 1]],
                        dtype=torch.bool)
    assert disjoint_groups(rows) == [[0, 1], [2, 4]]
