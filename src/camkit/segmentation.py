"""Targets for semantic segmentation: "this class inside this region".

A segmentation model returns per-pixel class scores ``(B, C, H', W')``: a tensor, a dict
(torchvision's FCN, DeepLabV3 and LR-ASPP give ``{"out": ..., "aux": ...}``) or an object with
``.logits`` (Hugging Face). The target score of class ``c`` in region ``R`` is
``s = Σ_{(i, j) ∈ R} z_c(i, j)``, the sum of the class's logits over the region's pixels.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from .targets import Target

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) pixels, x1 and y1 excluded


def segmentation_logits(outputs: Any) -> Tensor:
    """The ``(B, C, H', W')`` per-pixel class scores inside a segmentation model's output."""
    if hasattr(outputs, "logits"):
        outputs = outputs.logits
    if isinstance(outputs, dict):
        outputs = outputs.get("out", outputs.get("logits"))
    if not isinstance(outputs, Tensor) or outputs.dim() != 4:
        raise TypeError(
            "a segmentation target needs per-pixel class scores (B, C, H, W): a tensor, a dict "
            "with 'out' or 'logits', or an object with .logits"
        )
    return outputs


@dataclass
class SemanticSegmentationTarget(Target):
    """The summed logits of class ``category`` over a region, one map per category.

    Args:
        category: a class index, or a sequence of ``K`` indices (``K`` maps per image).
        region: where to sum: ``None`` for the pixels the model assigns to the class
            (``argmax == category`` on the unperturbed output); a mask ``(H, W)``,
            ``(B, H, W)`` or ``(B, K, H, W)`` (bool or weights, resized to the output's
            resolution by nearest neighbour when it differs); or a box ``(x0, y0, x1, y1)``
            in output pixels.
    """

    category: int | Sequence[int]
    region: Tensor | Box | None = None

    @property
    def categories(self) -> Tensor:
        return torch.as_tensor(
            [self.category] if isinstance(self.category, int) else list(self.category)
        ).long()

    def bind(self, outputs: Any) -> SemanticSegmentationTarget:
        """The region fixed on the unperturbed output; a warning names the classes whose
        region is empty in some image (their score is 0 and their maps constant)."""
        logits = segmentation_logits(outputs)
        masks = self._masks(logits)
        empty = masks.flatten(-2).sum(-1).eq(0).expand(len(logits), len(self.categories))
        if empty.any():
            where = "predicted nowhere" if self.region is None else "an empty region"
            classes = self.categories[empty.any(0).cpu()].tolist()
            warnings.warn(f"class(es) {classes}: {where} in {int(empty.any(1).sum())} of "
                          f"{len(logits)} images, where the score is 0 and the maps constant; "
                          "give a non-empty box or mask as the region", RuntimeWarning,
                          stacklevel=4)
        return replace(self, region=masks)

    def scores(self, outputs: Any, rows: Tensor | None = None) -> Tensor:
        logits = segmentation_logits(outputs)
        masks = self._masks(logits)
        if rows is not None and masks.shape[0] > 1:
            masks = masks[rows.to(masks.device)]
        class_logits = logits[:, self.categories.to(logits.device)]  # (n, K, H', W')
        return (class_logits * masks.to(logits.dtype)).sum(dim=(-2, -1))

    def _masks(self, logits: Tensor) -> Tensor:
        """The region as ``(B or 1, K or 1, H', W')`` weights on the output grid."""
        size = logits.shape[-2:]
        if self.region is None:
            predicted = logits.argmax(dim=1, keepdim=True)
            return (predicted == self.categories.to(logits.device)[:, None, None]).float()
        if isinstance(self.region, Tensor):
            mask = self.region.to(logits.device).float()
            mask = {2: mask[None, None], 3: mask[:, None]}.get(mask.dim(), mask)
            if mask.shape[-2:] != size:
                mask = F.interpolate(mask, size=size, mode="nearest")
            return mask
        x0, y0, x1, y1 = (round(v) for v in self.region)
        mask = logits.new_zeros((1, 1, *size))
        mask[..., max(y0, 0):y1, max(x0, 0):x1] = 1
        return mask
