"""Per-box gradients of detectors where their scores read the features (a two-stage detector's
RoI rows, a one-stage detector's head outputs per pyramid level): equal to the plain batched
backward (the generic path) for batches, several layers, boxes that share a proposal, boxes
that match nothing and IoU-dependent scores; pooled again on the rows the scores read only."""

from __future__ import annotations

import warnings
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD

import camkit
from camkit.capture import detectors
from camkit.capture.detectors import disjoint_groups
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
            patch.setattr(detectors, "roi_box_head", lambda *_: None)
            patch.setattr(detectors, "dense_score_modules", lambda *_: None)
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


class TwoLevels(nn.Module):
    """Two feature levels of 32 channels, at 1/4 and 1/8 of the input (``down``, ``up``)."""

    def __init__(self, out_channels: int | list[int]) -> None:
        super().__init__()
        self.out_channels = out_channels  # SSD takes one number per level
        self.down = nn.Sequential(nn.Conv2d(3, 32, 3, 4, 1), nn.ReLU())
        self.up = nn.Conv2d(32, 32, 3, 2, 1)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        low = self.down(x)
        return OrderedDict([("0", low), ("1", self.up(low))])


def tiny_one_stage(kind: str) -> nn.Module:
    """A RetinaNet, FCOS (GroupNorm towers) or SSD on :class:`TwoLevels`; every candidate kept."""
    torch.manual_seed(5)
    keep = {"score_thresh": 0.0, "detections_per_img": 10, "topk_candidates": 40}
    if kind == "ssd":
        return SSD(TwoLevels([32, 32]), DefaultBoxGenerator([[2], [2]]), (SIZE, SIZE), 3,
                   **keep).eval()
    sizes = ((16,), (32,))
    ratios = ((0.5, 1.0, 2.0),) * 2 if kind == "retinanet" else ((1.0,),) * 2
    detector = RetinaNet if kind == "retinanet" else FCOS
    return detector(TwoLevels(32), 3, min_size=SIZE, max_size=SIZE,
                    anchor_generator=AnchorGenerator(sizes, ratios), **keep).eval()


@pytest.mark.parametrize("kind", ["retinanet", "fcos", "ssd"])
def test_one_stage_detectors_back_propagate_from_the_level_each_box_reads(
        kind: str, images: Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_one_stage(kind)
    found = detections(model, images)
    boxes = torch.stack([d["boxes"][[0, 2, 2]] for d in found])  # a box twice
    labels = torch.stack([d["labels"][[0, 2, 2]] for d in found])
    boxes[1, 2], labels[1, 2] = torch.tensor([60.0, 60, 63, 63]), 1  # matches nothing
    fast, generic = explain_both(model, images, BoxScoreTarget(boxes, labels, add_iou=True),
                                 ["backbone.down", "backbone.up"], monkeypatch)
    summary = fast.per_layer["backbone.up"].details["gradients"]
    per_level = {"retinanet": 2, "fcos": 3, "ssd": 2}[kind]  # class, box (and centre-ness)
    assert summary["path"] == "head-levels" and summary["outputs"] == 2 * per_level
    assert summary["outputs_read"] < 3 * summary["outputs"]  # some levels skipped
    for layer in ("backbone.down", "backbone.up"):
        assert_same_maps(fast.per_layer[layer], generic.per_layer[layer])
