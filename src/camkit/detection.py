"""Targets for object detectors: "this detected box".

torchvision's detectors (Faster R-CNN, RetinaNet, FCOS, SSD, ...) return, in eval mode, one
dict per image with ``boxes`` ``(D, 4)`` (x0, y0, x1, y1 in input pixels), ``labels`` ``(D,)``
and ``scores`` ``(D,)``. The scores are differentiable functions of the network's features, so
every gradient method explains them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import (
    FastRCNNConvFCHead,
    FastRCNNPredictor,
    TwoMLPHead,
)
from torchvision.models.detection.fcos import (
    FCOS,
    FCOSClassificationHead,
    FCOSHead,
    FCOSRegressionHead,
)
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.retinanet import (
    RetinaNet,
    RetinaNetClassificationHead,
    RetinaNetHead,
    RetinaNetRegressionHead,
)
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.ssd import (
    SSD,
    SSDClassificationHead,
    SSDHead,
    SSDRegressionHead,
)
from torchvision.models.detection.ssdlite import (
    SSDLiteClassificationHead,
    SSDLiteHead,
    SSDLiteRegressionHead,
)
from torchvision.ops import MultiScaleRoIAlign, box_area

from .targets import Target


def detections_of(outputs: Any) -> Sequence[dict[str, Tensor]]:
    """The per-image detection dicts of a detector's output (a list of dicts)."""
    if isinstance(outputs, tuple) and len(outputs) == 2 and isinstance(outputs[1], list):
        outputs = outputs[1]  # torchscript detectors return (losses, detections)
    if not (isinstance(outputs, list) and all(
            isinstance(d, dict) and {"boxes", "labels", "scores"} <= set(d) for d in outputs)):
        raise TypeError(
            "a box target needs a detector's output: one dict per image with 'boxes', 'labels' "
            "and 'scores' (torchvision detectors in eval mode)"
        )
    return outputs


@dataclass
class BoxScoreTarget(Target):
    """The score of the detection that matches each reference box, one map per box.

    For image ``b`` and reference box ``k`` with label ``l``, the matches are the detections
    ``d`` with ``label_d = l`` and ``IoU(box_d, box_k) ≥ iou_threshold``; the target score is
    ``score_d`` of the match with the highest IoU (``+ IoU`` with ``add_iou``), 0 without one.

    Args:
        boxes: ``(K, 4)`` for every image or ``(B, K, 4)``, x0, y0, x1, y1 in input pixels.
        labels: ``(K,)`` or ``(B, K)`` class labels of the boxes.
        iou_threshold: the least IoU of a match.
        add_iou: add the match's IoU to its score, as pytorch-grad-cam's
            ``FasterRCNNBoxScoreTarget`` does (which then sums over its boxes).
    """

    boxes: Tensor
    labels: Tensor
    iou_threshold: float = 0.5
    add_iou: bool = False

    def __post_init__(self) -> None:
        boxes, labels = torch.as_tensor(self.boxes), torch.as_tensor(self.labels)
        if boxes.dim() not in (2, 3) or boxes.shape[-1] != 4 or boxes.shape[-2] == 0:
            raise ValueError(f"boxes must be (K, 4) or (B, K, 4) with K >= 1, got "
                             f"{tuple(boxes.shape)}")
        if labels.shape != boxes.shape[:-1]:
            raise ValueError(f"labels must have the boxes' shape without the last dimension, "
                             f"{tuple(boxes.shape[:-1])}; got {tuple(labels.shape)}")

    def scores(self, outputs: Any, rows: Tensor | None = None) -> Tensor:
        detections = detections_of(outputs)
        boxes, labels = self._per_row(len(detections), rows)
        return torch.stack([self._image_scores(d, b, lab)
                            for d, b, lab in zip(detections, boxes, labels, strict=True)])

    def _per_row(self, n: int, rows: Tensor | None) -> tuple[Tensor, Tensor]:
        """The ``(n, K, 4)`` reference boxes and ``(n, K)`` labels of ``n`` output rows."""
        boxes = torch.as_tensor(self.boxes, dtype=torch.float32)
        labels = torch.as_tensor(self.labels)
        if boxes.dim() == 2:
            return boxes.expand(n, -1, -1), labels.expand(n, -1)
        if rows is not None:
            return boxes[rows.cpu()], labels[rows.cpu()]
        return boxes, labels

    def _image_scores(self, detected: dict[str, Tensor], boxes: Tensor, labels: Tensor) -> Tensor:
        """``(K,)`` scores of one image's reference ``boxes`` ``(K, 4)``."""
        scores = detected["scores"]
        if scores.numel() == 0:  # nothing detected: zeros that still belong to the graph
            return scores.sum() + scores.new_zeros(len(boxes))
        iou = finite_iou(boxes.to(scores.device, detected["boxes"].dtype), detected["boxes"])
        match = (iou >= self.iou_threshold) & (labels.to(scores.device)[:, None]
                                               == detected["labels"][None])
        value = scores[None] + iou if self.add_iou else scores[None].expand_as(iou)
        best = torch.where(match, iou, -1.0).argmax(dim=1, keepdim=True)
        picked = value.gather(1, best)[:, 0]
        return torch.where(match.any(dim=1), picked, picked * 0)


def finite_iou(boxes: Tensor, others: Tensor) -> Tensor:
    """``(N, M)`` IoU of ``boxes`` ``(N, 4)`` and ``others`` ``(M, 4)``, x0, y0, x1, y1:
    ``|a ∩ b| / |a ∪ b|``, and 0 (with a finite gradient) where both boxes are empty, where
    ``torchvision.ops.box_iou`` divides 0 by 0."""
    low = torch.max(boxes[:, None, :2], others[None, :, :2])
    high = torch.min(boxes[:, None, 2:], others[None, :, 2:])
    inter = (high - low).clamp(min=0).prod(dim=-1)
    union = box_area(boxes)[:, None] + box_area(others)[None] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def confident_detections(outputs: Any, score_threshold: float, max_boxes: int
                         ) -> list[tuple[Tensor, Tensor]]:
    """Each image's detections scoring at least ``score_threshold``, best first, at most
    ``max_boxes``: ``(boxes (D, 4), labels (D,))`` per image, detached."""
    kept = []
    for found in detections_of(outputs):
        order = found["scores"].argsort(descending=True)
        order = order[found["scores"][order] >= score_threshold][:max_boxes]
        kept.append((found["boxes"][order].detach(), found["labels"][order].detach()))
    return kept


@dataclass
class DetectedBoxesTarget(Target):
    """Every detection of the unperturbed output scoring at least ``score_threshold`` (at most
    ``max_boxes`` per image, best first), explained as a :class:`BoxScoreTarget` reference
    box: one map per detection, the ``k``-th map of image ``b`` for its ``k``-th detection.

    Images with fewer detections than the batch's most are padded with boxes that match
    nothing (score 0: constant maps, flagged in ``expl.constant``);
    :func:`confident_detections` says how many each image has.
    """

    score_threshold: float = 0.5
    max_boxes: int = 10
    iou_threshold: float = 0.5

    def bind(self, outputs: Any) -> BoxScoreTarget:
        kept = confident_detections(outputs, self.score_threshold, self.max_boxes)
        most = max(len(labels) for _, labels in kept)
        if most == 0:
            raise ValueError(f"no detection scores at least {self.score_threshold}; lower the "
                             "score threshold or give a reference box (BoxScoreTarget)")
        boxes = torch.zeros(len(kept), most, 4)
        labels = torch.full((len(kept), most), -1, dtype=torch.long)
        for b, (found, found_labels) in enumerate(kept):
            boxes[b, :len(found)], labels[b, :len(found)] = found.cpu(), found_labels.cpu()
        return BoxScoreTarget(boxes, labels, self.iou_threshold)

    def scores(self, outputs: Any, rows: Tensor | None = None) -> Tensor:
        """The scores of the detections in ``outputs`` itself (``camkit.explain`` binds the
        target to the unperturbed output first)."""
        return self.bind(outputs).scores(outputs, rows)


@dataclass(frozen=True)
class RoIBoxHead:
    """The box branch of a torchvision two-stage detector (Faster, Mask, Keypoint R-CNN).

    ``pool(features, proposals, image_shapes)`` pools one row per proposal, ``(P, C, s, s)``,
    the proposals of each image in turn; ``predictor(head(rows))`` gives each row's
    ``(class_logits (P, n_classes), box_regression (P, 4 n_classes))`` from that row alone (in
    eval mode). A detection's box and score are functions of one row of those outputs and of
    its proposal, which the region proposal network detaches: the score of a detection
    depends on the backbone's features through one pooled row only.
    """

    pool: nn.Module
    head: nn.Module
    predictor: nn.Module


# The box branches whose rows are known to be computed independently of each other.
_POOLS, _HEADS, _PREDICTORS = (MultiScaleRoIAlign,), (TwoMLPHead, FastRCNNConvFCHead), (
    FastRCNNPredictor,)


def roi_box_head(model: nn.Module, layers: Iterable[nn.Module], targets: Any
                 ) -> RoIBoxHead | None:
    """The box branch of ``model`` when the gradients of ``targets`` at ``layers`` may be taken
    through it row by row, else ``None``.

    That holds for a torchvision two-stage detector called as it is (its own ``forward``), with
    its own ``RoIHeads``, pooler, box head and predictor (a custom head could mix its rows),
    when no layer lies inside the box branch or the region proposal network (whose proposals
    carry no gradient), and, for Mask and Keypoint R-CNN (whose masks and keypoints pool the
    features again), when the target reads only the boxes' scores (:class:`BoxScoreTarget`,
    :class:`DetectedBoxesTarget`).
    """
    if not (isinstance(model, GeneralizedRCNN) and type(model).forward is GeneralizedRCNN.forward
            and type(model.roi_heads) is RoIHeads):
        return None
    roi = model.roi_heads
    pool, head, predictor = roi.box_roi_pool, roi.box_head, roi.box_predictor
    if not (isinstance(pool, nn.Module) and isinstance(head, nn.Module)
            and isinstance(predictor, nn.Module) and type(pool) in _POOLS
            and type(head) in _HEADS and type(predictor) in _PREDICTORS):
        return None
    if _inside(layers, roi, model.rpn):
        return None
    if ((roi.has_mask() or roi.has_keypoint())
            and not isinstance(targets, (BoxScoreTarget, DetectedBoxesTarget))):
        return None
    return RoIBoxHead(pool, head, predictor)


# One-stage detectors: the model, its head, the heads inside it, and the attributes of the
# modules whose outputs every detection reads (a list attribute: each of its modules).
_DENSE = (
    (RetinaNet, RetinaNetHead, RetinaNetClassificationHead, RetinaNetRegressionHead,
     ("cls_logits",), ("bbox_reg",)),
    (FCOS, FCOSHead, FCOSClassificationHead, FCOSRegressionHead,
     ("cls_logits",), ("bbox_reg", "bbox_ctrness")),
    (SSD, SSDHead, SSDClassificationHead, SSDRegressionHead, ("module_list",), ("module_list",)),
    (SSD, SSDLiteHead, SSDLiteClassificationHead, SSDLiteRegressionHead, ("module_list",),
     ("module_list",)),
)


def dense_score_modules(model: nn.Module, layers: Iterable[nn.Module]
                        ) -> tuple[nn.Module, ...] | None:
    """The modules whose outputs every detection of a torchvision one-stage detector reads,
    else ``None``: RetinaNet's and FCOS's last convolutions (class logits, box regression,
    centre-ness), each called once per pyramid level, or each level's own SSD head. A
    detection is one anchor of one level: its score and box read one call's output.

    That holds for RetinaNet, FCOS, SSD and SSDlite called as they are (their own
    ``forward``), with their own heads, when no layer lies inside the head."""
    for detector, head, classes, boxes, class_outputs, box_outputs in _DENSE:
        if not (isinstance(model, detector) and type(model).forward is detector.forward
                and type(model.head) is head
                and type(model.head.classification_head) is classes
                and type(model.head.regression_head) is boxes):
            continue
        if _inside(layers, model.head):
            return None
        found = [getattr(model.head.classification_head, name) for name in class_outputs]
        found += [getattr(model.head.regression_head, name) for name in box_outputs]
        return tuple(m for f in found for m in (f if isinstance(f, nn.ModuleList) else [f]))
    return None


def _inside(layers: Iterable[nn.Module], *parts: nn.Module) -> bool:
    """Whether one of ``layers`` is one of the modules of ``parts``."""
    inside = {id(m) for part in parts for m in part.modules()}
    return any(id(layer) in inside for layer in layers)


def proposal_rows(proposals: Sequence[Tensor], rows: Tensor) -> list[Tensor]:
    """The proposals of the pooled ``rows`` (sorted global row indices, the proposals of each
    image in turn), as the per-image list the pooler takes: pooling them gives those rows."""
    counts = torch.tensor([len(p) for p in proposals], device=rows.device)
    ends = counts.cumsum(0)
    image = torch.bucketize(rows, ends, right=True)
    local = rows - (ends - counts)[image]
    return [p[local[image == b]] for b, p in enumerate(proposals)]
