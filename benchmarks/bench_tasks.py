"""Beyond classification: segmentation and Faster R-CNN maps against grad-cam's targets, and the
cost of a detector's Grad-CAM for all its boxes of an image in one call.

Models: torchvision ``deeplabv3_resnet50`` (21 classes), ``fasterrcnn_resnet50_fpn``,
``retinanet_resnet50_fpn`` and ``fcos_resnet50_fpn`` (4 classes, internal size 224), random
weights, seed 0, on a real ImageNet photo (``foolbox``; seeded noise without it), 224×224.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
import torchvision
from torch import Tensor, nn

import camkit
from bench_gradient import as_gradcam_lib, max_diff, photos
from camkit.capture import detectors
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
        "call against one plain forward pass with autograd on plus one backward of the summed "
        "detection scores into the parameters, as a user trains it (the floor, on a copy of "
        "the model). The reference boxes are the detector's own first detections with a "
        "positive area. Median of per-round ratios, timed round-robin. camkit takes the "
        "per-box gradients where each box's score reads the features (`camkit.capture."
        "detectors`: Faster R-CNN's RoI rows, RetinaNet's and FCOS's head outputs per pyramid "
        "level); each `generic` row is the same call with the detector unrecognised (one "
        "batched backward for all boxes through the whole head)."
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


def dense_detector(name: str) -> nn.Module:
    """RetinaNet or FCOS, four classes, internal size 224. Their random classification heads
    start at the focal-loss prior (class probability 0.01), under the default thresholds: the
    threshold is 0, and each level's 1000 best candidates go through the post-processing."""
    model = getattr(torchvision.models.detection, name)(
        weights=None, weights_backbone=None, num_classes=4, min_size=224, max_size=224).eval()
    model.score_thresh = 0.0
    return model


def timed_against_floor(build: Callable[[], nn.Module], x: Tensor, boxes: Tensor,
                        labels: Tensor, counts: Sequence[int]) -> tuple[dict[str, float], float]:
    """Paired ratios of ``camkit.explain`` (Grad-CAM at ``backbone.body.layer4``) for the first
    ``n`` reference boxes, each ``n`` of ``counts``, to one forward + backward of the summed
    detection scores into the parameters of a copy of the model, and of the call for the
    first ``counts[0]`` boxes with the detector unrecognised (``"generic"``: the plain batched
    backward). Returns the ratios and the fastest floor round in seconds."""
    model = build()
    trained = build()
    trained.load_state_dict(model.state_dict())

    def floor() -> None:
        found = trained(x)[0]
        found["scores"].sum().backward()
        trained.zero_grad(set_to_none=True)

    def ours(n: int) -> Callable[[], None]:
        target = camkit.BoxScoreTarget(boxes[:n], labels[:n])
        return lambda: camkit.explain(model, x, target, "gradcam", layer="backbone.body.layer4")

    def unrecognised() -> None:
        with patched(detectors, "roi_box_head", lambda *_: None), \
                patched(detectors, "dense_score_modules", lambda *_: None):
            ours(counts[0])()

    fns: dict[str, Callable[[], object]] = {"floor": floor, **{str(n): ours(n) for n in counts},
                                            "generic": unrecognised}
    warmup, repeats = settings()
    samples = interleaved_samples(fns, warmup, repeats)
    ratios = {name: paired_ratio(samples[name], samples["floor"]) for name in fns
              if name != "floor"}
    return ratios, min(samples["floor"])


@contextlib.contextmanager
def patched(owner: object, name: str, value: object) -> Iterator[None]:
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def speed_rows(x: Tensor) -> list[Row]:
    boxes, labels = reference_boxes(detector(), x, 3 * BOXES)
    many = len(boxes)
    ratios, fastest = timed_against_floor(detector, x, boxes, labels, (BOXES, many))
    rows = [
        row(SPEED, f"Faster R-CNN Grad-CAM, {BOXES} boxes, one call / (forward + backward)",
            ratios[str(BOXES)], "×",
            f"ResNet50-FPN at 224×224, fastest floor round {1e3 * fastest:.0f} ms; through the "
            f"RoI rows (tasks.md): the box head runs again on the {BOXES} matched proposals "
            "only, then per box RoI align of its row and the feature pyramid from its level "
            "back to the layer", "<= 1.3"),
        row(SPEED, f"Faster R-CNN Grad-CAM, {many} boxes, one call / (forward + backward)",
            ratios[str(many)], "×",
            "each further box adds one input-gradient backward of the feature pyramid from its "
            "level to the layer"),
        generic_row("Faster R-CNN", ratios["generic"],
                    "each box's backward runs the box head (12544 → 1024) over all ~1000 "
                    "proposals"),
    ]
    for name, title in (("retinanet_resnet50_fpn", "RetinaNet"), ("fcos_resnet50_fpn", "FCOS")):
        model = dense_detector(name)
        boxes, labels = reference_boxes(model, x, BOXES)
        ratios, fastest = timed_against_floor(lambda name=name: dense_detector(name), x, boxes,
                                              labels, (BOXES,))
        towers = ("its level's classification tower" if title == "RetinaNet" else
                  "its level's classification and regression towers (the score multiplies in "
                  "the centre-ness)")
        rows += [
            row(SPEED, f"{title} Grad-CAM, {BOXES} boxes, one call / (forward + backward)",
                ratios[str(BOXES)], "×",
                f"ResNet50-FPN at 224×224, score threshold 0, fastest floor round "
                f"{1e3 * fastest:.0f} ms; per box one backward from the head outputs of the "
                f"pyramid level it reads (tasks.md): {towers} and the pyramid, where the "
                "floor's one backward runs every level's towers", "<= 1.3"),
            generic_row(title, ratios["generic"],
                        "each box's backward runs the head's towers over every pyramid level"),
        ]
    return rows


def generic_row(title: str, ratio: float, why: str) -> Row:
    return row(SPEED, f"{title} Grad-CAM, {BOXES} boxes, generic batched backward / "
                      "(forward + backward)", ratio, "×",
               f"the same call for a detector camkit does not recognise: {why}")


def run() -> list[Row]:
    setup(0)
    x = image()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant-map warnings of random-weight maps
        return segmentation_rows(x) + detection_rows(x) + speed_rows(x)


if __name__ == "__main__":
    for r in run():
        print(r)
