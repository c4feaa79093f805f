"""Beyond classification: segmentation and Faster R-CNN maps against grad-cam's targets, and the
cost of a detector's Grad-CAM for all its boxes of an image in one call.

Models: torchvision ``deeplabv3_resnet50`` (21 classes) and ``fasterrcnn_resnet50_fpn``
(4 classes, internal size 224), random weights, seed 0, on a real
ImageNet photo (``foolbox``; seeded noise without it), 224×224.
"""

from __future__ import annotations

import warnings

import torch
import torchvision
from torch import Tensor, nn

import camkit
from bench_gradient import as_gradcam_lib, max_diff, photos
from common import Row, interleaved_samples, paired_ratio, row, settings, setup

MAPS, SPEED = "tasks-maps", "tasks-speed"
SAME = "<= 1e-4"
BOXES = 10  # boxes explained per image by the detector rows

DESCRIPTIONS = {
    MAPS: (
        "Grad-CAM maps of one image: camkit's raw map put through grad-cam's post-processing "
        "(ReLU, min-max at the layer's resolution, cv2 bilinear resize, min-max) against "
        "grad-cam's public map for the same target. Segmentation: DeepLabV3's class with the "
        "most pixels, summed over its predicted region, at `backbone.layer4`; grad-cam gets "
        "`SemanticSegmentationTarget(category, mask)` on a wrapper returning `out`. Faster "
        "R-CNN: each of its first detections with a positive area as the reference box, at "
        "`backbone.body.layer4`; camkit explains all of them in one call with "
        "`BoxScoreTarget(boxes, labels, add_iou=True)`, grad-cam gets one "
        "`FasterRCNNBoxScoreTarget` per box (its score is IoU + class score)."
    ),
    SPEED: (
        "A detector's Grad-CAM for all its reference boxes of an image in one `camkit.explain` "
        "call (one forward pass, one batched backward for the boxes) against one plain forward "
        "pass with autograd on plus one backward of the summed detection scores into the "
        "parameters, as a user trains it. Median of per-round ratios, timed round-robin."
    ),
}


def image() -> Tensor:
    return photos(1).float() / 255


class OutOnly(nn.Module):
    """A segmentation model returning its ``out`` tensor (what grad-cam's tutorial wraps)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)["out"]


def segmentation_rows(x: Tensor) -> list[Row]:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget as PeerTarget

    model = torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=21).eval()
    with torch.no_grad():
        predicted = model(x)["out"].argmax(dim=1)[0]
    category = int(predicted.flatten().bincount().argmax())
    mask = (predicted == category).float()
    ours = camkit.explain(model, x, camkit.SemanticSegmentationTarget(category), "gradcam",
                          layer="backbone.layer4")
    with GradCAM(OutOnly(model), target_layers=[model.backbone.layer4]) as cam:
        peer = torch.from_numpy(cam(input_tensor=x, targets=[PeerTarget(category, mask.numpy())]))
    model.zero_grad(set_to_none=True)
    return [
        row(MAPS, "segmentation Grad-CAM vs grad-cam (same post-processing)",
            max_diff(as_gradcam_lib(ours.raw["gradcam"][:, 0]), peer), "max |Δ|",
            f"DeepLabV3-ResNet50, class {category}, {int(mask.sum())} pixels", SAME),
        row(MAPS, "segmentation Grad-CAM vs grad-cam (as returned)",
            max_diff(ours["gradcam"][:, 0], peer), "max |Δ|",
            "camkit resizes, then normalises (ALGORITHMS §0)"),
    ]


def detector() -> nn.Module:
    """Random weights score every class about 1/n: with 91 classes none passes the default
    threshold of 0.05, and with the threshold at 0 all 1000 × 90 candidates go through the
    post-processing. Four classes and the default threshold keep what a trained detector
    keeps: a few hundred candidates."""
    return torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=4, min_size=224, max_size=224).eval()


def reference_boxes(model: nn.Module, x: Tensor, n: int) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        found = model(x)[0]
    boxes = found["boxes"]
    keep = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).nonzero()[:n, 0]
    return boxes[keep], found["labels"][keep]


def detection_rows(x: Tensor) -> list[Row]:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    model = detector()
    boxes, labels = reference_boxes(model, x, BOXES)
    target = camkit.BoxScoreTarget(boxes, labels, add_iou=True)
    ours = camkit.explain(model, x, target, "gradcam", layer="backbone.body.layer4")
    worst = 0.0
    with GradCAM(model, target_layers=[model.backbone.body.layer4]) as cam:
        for k in range(len(boxes)):
            peer_target = FasterRCNNBoxScoreTarget(labels[k:k + 1], boxes[k:k + 1].numpy())
            peer = torch.from_numpy(cam(input_tensor=x, targets=[peer_target]))
            worst = max(worst, max_diff(as_gradcam_lib(ours.raw["gradcam"][:, k]), peer))
    model.zero_grad(set_to_none=True)
    return [row(MAPS, "Faster R-CNN Grad-CAM vs grad-cam, per box (same post-processing)",
                worst, "max |Δ|", f"worst of {len(boxes)} boxes, one camkit call", SAME)]


def speed_rows(x: Tensor) -> list[Row]:
    model = detector()
    boxes, labels = reference_boxes(model, x, BOXES)
    target = camkit.BoxScoreTarget(boxes, labels)
    trained = detector()
    trained.load_state_dict(model.state_dict())

    def floor() -> None:
        found = trained(x)[0]
        found["scores"].sum().backward()
        trained.zero_grad(set_to_none=True)

    def ours() -> None:
        camkit.explain(model, x, target, "gradcam", layer="backbone.body.layer4")

    warmup, repeats = settings()
    samples = interleaved_samples({"floor": floor, "ours": ours}, warmup, repeats)
    return [row(SPEED, f"Faster R-CNN Grad-CAM, {len(boxes)} boxes, one call / "
                       "(forward + backward)", paired_ratio(samples["ours"], samples["floor"]),
                "×", f"ResNet50-FPN at 224×224, fastest floor round "
                     f"{1e3 * min(samples['floor']):.0f} ms; each box's gradient passes back "
                     "through the box head for all its proposals, so the batched backward "
                     "grows with the boxes (the floor's backward runs once)",
                "<= 1.3")]


def run() -> list[Row]:
    setup(0)
    x = image()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant-map warnings of random-weight maps
        return segmentation_rows(x) + detection_rows(x) + speed_rows(x)


if __name__ == "__main__":
    for r in run():
        print(r)
