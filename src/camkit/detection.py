"""Targets for object detectors: "this detected box".

torchvision's detectors (Faster R-CNN, RetinaNet, FCOS, SSD, ...) return, in eval mode, one
dict per image with ``boxes`` ``(D, 4)`` (x0, y0, x1, y1 in input pixels), ``labels`` ``(D,)``
and ``scores`` ``(D,)``. The scores are differentiable functions of the network's features, so
every gradient method explains them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_iou

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

    def scores(self, outputs: Any, rows: Tensor | None = None) -> Tensor:
        detections = detections_of(outputs)
        boxes = torch.as_tensor(self.boxes, dtype=torch.float32)
        labels = torch.as_tensor(self.labels)
        boxes, labels = boxes.expand(len(detections), -1, -1) if boxes.dim() == 2 else boxes, (
            labels.expand(len(detections), -1) if labels.dim() == 1 else labels)
        if rows is not None and boxes.shape[0] != len(detections):
            boxes, labels = boxes[rows.cpu()], labels[rows.cpu()]
        return torch.stack([self._image_scores(d, b, lab)
                            for d, b, lab in zip(detections, boxes, labels, strict=True)])

    def _image_scores(self, detected: dict[str, Tensor], boxes: Tensor, labels: Tensor) -> Tensor:
        """``(K,)`` scores of one image's reference ``boxes`` ``(K, 4)``."""
        scores = detected["scores"]
        if scores.numel() == 0:  # nothing detected: zeros that still belong to the graph
            return scores.sum() + scores.new_zeros(len(boxes))
        iou = box_iou(boxes.to(scores.device, detected["boxes"].dtype), detected["boxes"])
        match = (iou >= self.iou_threshold) & (labels.to(scores.device)[:, None]
                                               == detected["labels"][None])
        value = scores[None] + iou if self.add_iou else scores[None].expand_as(iou)
        best = torch.where(match, iou, -1.0).argmax(dim=1, keepdim=True)
        picked = value.gather(1, best)[:, 0]
        return torch.where(match.any(dim=1), picked, picked * 0)
