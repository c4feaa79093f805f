"""Box targets on detectors: one map per reference box, many boxes in one call equal to one
call per box, Grad-CAM against a literal autograd reference, Eigen-CAM and Ablation-CAM, and
torchvision's detector families (list-of-dict outputs)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import (
    FastRCNNConvFCHead,
    FastRCNNPredictor,
    TwoMLPHead,
)
from torchvision.ops import MultiScaleRoIAlign, box_iou

import camkit
from camkit.detection import (
    BoxScoreTarget,
    DetectedBoxesTarget,
    finite_iou,
    proposal_rows,
    roi_box_head,
)

SIZE = 64


def tiny_faster_rcnn(conv_head: bool = False) -> FasterRCNN:
    """A Faster R-CNN on a two-conv backbone ("backbone.2", 8 channels), fast enough for
    Ablation-CAM in a test; every proposal is kept (score threshold 0). ``conv_head``: a box
    head with a convolution over each proposal's 7×7 crop (as Faster R-CNN v2's)."""
    torch.manual_seed(8)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                             nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
    backbone.out_channels = 8
    anchors = AnchorGenerator(sizes=((16, 32),), aspect_ratios=((0.5, 1.0, 2.0),))
    heads = ({"box_head": FastRCNNConvFCHead((8, 7, 7), [8], [16]),
              "box_predictor": FastRCNNPredictor(16, 4), "num_classes": None} if conv_head
             else {"num_classes": 4})
    return FasterRCNN(backbone, min_size=SIZE, max_size=SIZE,
                      rpn_anchor_generator=anchors, box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
                      rpn_pre_nms_top_n_test=40, rpn_post_nms_top_n_test=20,
                      box_detections_per_img=10, box_score_thresh=0.0, **heads).eval()


@pytest.fixture
def detector() -> FasterRCNN:
    return tiny_faster_rcnn()


@pytest.fixture
def image() -> Tensor:
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(9))


def detected(model: nn.Module, x: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` detections with a positive area (random weights also give flat ones)."""
    with torch.no_grad():
        found = model(x)[0]
    boxes = found["boxes"]
    keep = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).nonzero()[:n, 0]
    assert len(keep) == n
    return boxes[keep], found["labels"][keep]


def reference_gradcam(model: FasterRCNN, x: Tensor, box: Tensor, label: int) -> Tensor:
    """Grad-CAM at backbone.2 of the best-IoU same-label detection's score, by a loop."""
    captured = []
    handle = model.backbone[2].register_forward_hook(
        lambda _m, _a, out: captured.append(out.detach().requires_grad_(True)) or captured[-1])
    try:
        with torch.enable_grad():
            found = model(x)[0]
    finally:
        handle.remove()
    best, best_iou = None, -1.0
    for d in range(len(found["boxes"])):
        iou = float(box_iou(box[None], found["boxes"][d:d + 1].detach()))
        if int(found["labels"][d]) == label and iou >= 0.5 and iou > best_iou:
            best, best_iou = d, iou
    (grads,) = torch.autograd.grad(found["scores"][best], captured[0])
    acts = captured[0]
    return (grads.mean(dim=(-2, -1), keepdim=True) * acts).sum(dim=1).clamp(min=0).detach()


def test_gradcam_of_a_box_matches_autograd(detector: FasterRCNN, image: Tensor) -> None:
    boxes, labels = detected(detector, image, 3)
    expl = camkit.explain(detector, image, BoxScoreTarget(boxes, labels), "gradcam",
                          layer="backbone.2")
    for k in range(3):
        expected = reference_gradcam(detector, image, boxes[k], int(labels[k]))
        torch.testing.assert_close(expl.raw["gradcam"][:, k].clamp(min=0), expected)


def test_many_boxes_in_one_call_equal_one_call_per_box(detector: FasterRCNN,
                                                       image: Tensor) -> None:
    boxes, labels = detected(detector, image, 3)
    methods = ["gradcam", "layercam", "eigencam", "ablationcam"]
    together = camkit.explain(detector, image, BoxScoreTarget(boxes, labels), methods,
                              layer="backbone.2")
    for k in range(3):
        alone = camkit.explain(detector, image, BoxScoreTarget(boxes[k:k + 1], labels[k:k + 1]),
                               methods, layer="backbone.2")
        for method in methods:
            torch.testing.assert_close(together.raw[method][:, k:k + 1], alone.raw[method])


def test_scores_pick_the_best_matching_detection_or_zero() -> None:
    found = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [0, 0, 9, 10], [20, 20, 30, 30]]),
              "labels": torch.tensor([1, 1, 2]), "scores": torch.tensor([0.9, 0.8, 0.7])}]
    boxes = torch.tensor([[0.0, 0, 9, 10], [20, 20, 30, 30], [20, 20, 30, 30], [50, 50, 60, 60]])
    target = BoxScoreTarget(boxes, torch.tensor([1, 2, 1, 1]))
    torch.testing.assert_close(target.scores(found), torch.tensor([[0.8, 0.7, 0.0, 0.0]]))
    with_iou = BoxScoreTarget(boxes[:1], torch.tensor([1]), add_iou=True)
    torch.testing.assert_close(with_iou.scores(found), torch.tensor([[1.8]]))


def test_empty_boxes_score_zero_with_finite_gradients() -> None:
    """A detector with random weights returns empty boxes (x0 = x1): taken as a reference box
    with ``add_iou``, IoU's 0 / 0 made its score and every gradient NaN."""
    boxes = torch.tensor([[8.0, 26, 8, 31], [31, 34, 32, 36], [0, 0, 10, 10]],
                         requires_grad=True)
    scores = torch.tensor([0.9, 0.8, 0.7], requires_grad=True)
    found = [{"boxes": boxes, "labels": torch.tensor([1, 1, 2]), "scores": scores}]
    target = BoxScoreTarget(torch.tensor([[8.0, 26, 8, 31], [31, 34, 32, 36]]),
                            torch.tensor([1, 1]), add_iou=True)
    picked = target.scores(found)
    torch.testing.assert_close(picked.detach(), torch.tensor([[0.0, 1.8]]))
    grads = torch.autograd.grad(picked.sum(), (boxes, scores))
    assert all(torch.isfinite(g).all() for g in grads)
    others = torch.tensor([[1.0, 2, 30, 40], [5, 5, 6, 9]])
    torch.testing.assert_close(finite_iou(boxes.detach(), others),
                               box_iou(boxes.detach(), others))


def test_per_image_boxes_follow_the_rows_of_modified_copies() -> None:
    far, near = [50.0, 50, 60, 60], [0.0, 0, 10, 10]
    found = {"boxes": torch.tensor([near]), "labels": torch.tensor([1]),
             "scores": torch.tensor([0.6])}
    target = BoxScoreTarget(torch.tensor([[far], [near]]), torch.tensor([[1], [1]]))
    scores = target.scores([found, found], rows=torch.tensor([1, 0]))  # image 1, then 0
    torch.testing.assert_close(scores, torch.tensor([[0.6], [0.0]]))


def test_methods_that_need_class_scores_say_so(detector: FasterRCNN, image: Tensor) -> None:
    boxes, labels = detected(detector, image, 1)
    with pytest.raises(ValueError, match="channel_softmax"):
        camkit.explain(detector, image, BoxScoreTarget(boxes, labels), "scorecam",
                       layer="backbone.2")
    with pytest.raises(TypeError, match="BoxScoreTarget"):
        camkit.explain(detector, image, None, "gradcam", layer="backbone.2")
    with pytest.raises(ValueError, match="K >= 1"):
        BoxScoreTarget(torch.zeros(0, 4), torch.zeros(0))
    with pytest.raises(ValueError, match="labels must"):
        BoxScoreTarget(boxes, labels[None])


def test_fullgrad_leaves_out_the_per_proposal_maps_of_a_box_head(image: Tensor) -> None:
    detector = tiny_faster_rcnn(conv_head=True)
    boxes, labels = detected(detector, image, 2)
    expl = camkit.explain(detector, image, BoxScoreTarget(boxes, labels), "fullgrad")
    assert expl["fullgrad"].shape == (1, 2, SIZE, SIZE)
    # the backbone's and the proposal network's 2 + 3 convs; the box head's one conv left out
    assert expl.details["fullgrad"] == {"bias_terms": 5, "not_image_maps": 1}


def test_shapley_cam_needs_second_derivatives_roi_align_has_not(detector: FasterRCNN,
                                                                image: Tensor) -> None:
    boxes, labels = detected(detector, image, 1)
    with pytest.raises(ValueError, match="second derivatives.*RoI align"):
        camkit.explain(detector, image, BoxScoreTarget(boxes, labels), "shapleycam",
                       layer="backbone.2")


@pytest.mark.parametrize(("name", "layer"), [
    ("fasterrcnn_mobilenet_v3_large_320_fpn", "backbone.body.12"),
    ("retinanet_resnet50_fpn", "backbone.body.layer4"),
    ("fcos_resnet50_fpn", "backbone.body.layer4"),
    ("ssdlite320_mobilenet_v3_large", "backbone.features.0"),
])
def test_torchvision_detectors(name: str, layer: str) -> None:
    torch.manual_seed(0)
    options = {"min_size": 128, "max_size": 128} if "resnet50" in name else {}
    model = getattr(torchvision.models.detection, name)(
        weights=None, weights_backbone=None, num_classes=3, **options).eval()
    model.score_thresh = 0.0  # random weights: keep every detection (RetinaNet, FCOS)
    if hasattr(model, "roi_heads"):
        model.roi_heads.score_thresh = 0.0
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(10))
    boxes, labels = detected(model, x, 2)
    expl = camkit.explain(model, x, BoxScoreTarget(boxes, labels), ["gradcam", "eigencam"],
                          layer=layer)
    assert expl["gradcam"].shape == (1, 2, 128, 128)
    assert (expl.scores > 0).all()
    path = "roi-rows" if name.startswith("fasterrcnn") else "head-levels"
    assert expl.details["gradients"]["path"] == path  # recognised: camkit.capture.detectors
    for method in expl:
        assert torch.isfinite(expl[method]).all()


def test_proposal_rows_split_global_rows_by_image() -> None:
    proposals = [torch.arange(12.0).view(3, 4), torch.arange(12.0, 20).view(2, 4)]
    picked = proposal_rows(proposals, torch.tensor([1, 3, 4]))
    assert [p.tolist() for p in picked] == [[[4.0, 5, 6, 7]],
                                            [[12.0, 13, 14, 15], [16.0, 17, 18, 19]]]
    assert [len(p) for p in proposal_rows(proposals, torch.tensor([0, 2]))] == [2, 0]


class MixingHead(TwoMLPHead):
    """A subclass of torchvision's box head (it could mix its rows)."""


def test_box_branches_taken_row_by_row(detector: FasterRCNN) -> None:
    box = BoxScoreTarget(torch.zeros(1, 4), torch.ones(1))
    assert roi_box_head(detector, [detector.backbone[2]], box) is not None
    assert roi_box_head(detector, [detector.backbone[2]], lambda out: out) is not None
    for inside in (detector.roi_heads.box_head.fc6, detector.rpn.head.conv):
        assert roi_box_head(detector, [detector.backbone[2], inside], box) is None
    detector.roi_heads.box_head = MixingHead(8 * 7 * 7, 16)
    assert roi_box_head(detector, [detector.backbone[2]], box) is None
    masks = MaskRCNN(detector.backbone, num_classes=4,
                     rpn_anchor_generator=detector.rpn.anchor_generator,
                     box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
                     mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2))
    for target in (box, DetectedBoxesTarget()):  # they read the boxes' scores only
        assert roi_box_head(masks, [masks.backbone[2]], target) is not None
    assert roi_box_head(masks, [masks.backbone[2]], lambda out: out) is None  # masks too
    assert roi_box_head(nn.Sequential(detector.backbone), [detector.backbone[2]], box) is None
