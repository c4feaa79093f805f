"""The annotated regions of a batch's targets, for the localisation metrics.

Every function returns values per target, ``(B, K, ...)``, with a ``(B, K)`` "annotated" flag
(False where the sample has no annotation for that class: the metric is then undefined).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..metrics.localization import box_masks
from .samples import Batch, Sample


def _class_planes(stack: Tensor, classes: list[int], size: tuple[int, int]) -> list[Tensor]:
    """The plane of each class: the only one of a one-object stack, else the class's own
    (empty for a class beyond the stack)."""
    return [stack[0] if stack.shape[0] == 1 else
            stack[c] if c < stack.shape[0] else torch.zeros(size, dtype=torch.bool)
            for c in classes]


def _leak_planes(sample: Sample, stack: Tensor, classes: list[int], size: tuple[int, int],
                 partners: Mapping[int, int] | None) -> list[Tensor]:
    """Per class, the union of the masks of the sample's other positives (or only of
    ``partners[c]``)."""
    present = set(sample.positives or ())
    planes = []
    for c in classes:
        others = [o for o in present - {c}
                  if o < stack.shape[0] and (partners is None or partners.get(c) == o)]
        planes.append(stack[others].any(dim=0) if others else torch.zeros(size, dtype=torch.bool))
    return planes


def _region_planes(sample: Sample, classes: list[int], kind: str,
                   partners: Mapping[int, int] | None) -> tuple[Tensor, list[bool]]:
    """``(K, H, W)`` bool planes of ``classes`` for one sample and whether each is annotated."""
    height, width = sample.image.shape[-2:]
    size = (height, width)
    stack = sample.masks if kind != "box" else (
        None if sample.boxes is None else box_masks(sample.boxes, size))
    # one object mask has no other objects to leak onto
    if stack is None or (kind == "leak" and stack.shape[0] == 1):
        return torch.zeros(len(classes), *size, dtype=torch.bool), [False] * len(classes)
    stack = stack.cpu()
    planes = (_leak_planes(sample, stack, classes, size, partners) if kind == "leak"
              else _class_planes(stack, classes, size))
    return torch.stack(planes), [bool(p.any()) for p in planes]


def regions(batch: Batch, kind: str, partners: Mapping[int, int] | None = None
            ) -> tuple[Tensor, Tensor]:
    """Regions of each target: ``kind`` ``"mask"``, ``"box"``, or ``"leak"`` (the union of the
    masks of the image's other positive classes, or only of ``partners[c]``); returns
    ``(regions (B, K, H, W) bool, annotated (B, K) bool)``, cached per batch."""
    key = ("regions", kind, None if partners is None else tuple(sorted(partners.items())))
    if key not in batch.cache:
        targets = batch.classes.tolist()
        parts = [_region_planes(s, t, kind, partners)
                 for s, t in zip(batch.samples, targets, strict=True)]
        device = batch.x.device
        batch.cache[key] = (torch.stack([p for p, _ in parts]).to(device),
                            torch.tensor([k for _, k in parts], dtype=torch.bool, device=device))
    return batch.cache[key]


def target_cells(batch: Batch) -> tuple[Tensor, tuple[int, int]]:
    """The grid cell of each target ``(B, K)`` long (−1 where the class has none) and the
    batch's one grid ``(rows, cols)``."""
    grid = batch.samples[0].grid
    if grid is None or any(s.grid != grid or s.cells is None for s in batch.samples):
        grids = {s.grid for s in batch.samples}
        raise ValueError(f"grid-pointing needs samples with 'cells' and one grid per batch, got "
                         f"grids {sorted(map(str, grids))}")
    targets = batch.classes
    cells = torch.stack([s.cells for s in batch.samples if s.cells is not None])
    cells = cells.to(targets.device)
    inside = targets < cells.shape[1]
    cell = cells.gather(1, targets.clamp(max=cells.shape[1] - 1)).where(inside, -1)
    return cell, grid


def nan_where_unknown(values: Tensor, known: Tensor) -> Tensor:
    """``values`` with NaN where ``known`` ``(B, K)`` is False."""
    return values.where(known, values.new_tensor(float("nan")))
