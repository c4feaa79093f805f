"""Synthetic images and their maps as report items."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from camkit import api
from camkit.demo.settings import UPSCALE
from camkit.viz.report import ReportItem, TargetRow


def stack(data: Any) -> tuple[Tensor, ...]:
    """Every item of a data set of tuples, stacked column by column."""
    items = [data[i] for i in range(len(data))]
    return tuple(torch.stack(column) for column in zip(*items, strict=True))


def picture(image: Tensor, scale: int = UPSCALE) -> np.ndarray:
    """A ``(3, H, W)`` image in [0, 1] as uint8 ``(scale·H, scale·W, 3)`` (nearest)."""
    rgb = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return rgb.repeat(scale, axis=0).repeat(scale, axis=1)


def maps_of(expl: api.Explanation, b: int) -> dict[str, Any]:
    """Image ``b``'s normalised and raw maps of every method, as :class:`ReportItem` fields."""
    return {"maps": {m: expl[m][b] for m in expl}, "raw": {m: expl.raw[m][b] for m in expl}}


def multilabel_item(expl: api.Explanation, b: int, image: Tensor, name: str,
                    class_names: Sequence[str]) -> ReportItem:
    """Image ``b`` of a multi-label explanation: per-class sigmoid probabilities."""
    probabilities = expl.outputs[b].detach().float().sigmoid()
    targets = [TargetRow(class_names[c], float(expl.scores[b, k]), float(probabilities[c]))
               for k, c in enumerate(expl.classes[b].tolist())]
    ranked = [(class_names[c], float(probabilities[c]))
              for c in probabilities.argsort(descending=True).tolist()]
    return ReportItem(name, picture(image), targets, predictions=ranked, **maps_of(expl, b))
