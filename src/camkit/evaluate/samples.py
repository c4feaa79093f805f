"""Data items as the harness reads them, failures, and batches of samples on the device.

An item is a tensor image, a tuple ``(image, label[, masks[, boxes]])``, or a dict or named
tuple (such as :class:`camkit.data.mosaic.MosaicItem`) with the keys

- ``image``: ``(C, H, W)`` tensor, ready for the model (normalised);
- ``label``: ``None``, an ``int`` class index (single-label), or a ``(n_classes,)`` 0/1
  multi-hot tensor (multi-label);
- ``mask``: ``(H, W)`` bool (one object, whatever the class) or ``(n_classes, H, W)`` (one
  mask per class, empty for absent classes);
- ``box``: ``(4,)`` or ``(n_classes, 4)`` as ``(x1, y1, x2, y2)`` pixels (x2, y2 exclusive),
  NaN for absent classes;
- ``cells`` and ``grid``: for grid mosaics, the ``(n_classes,)`` cell index ``row · cols +
  col`` of each class (−1 when absent) and the grid ``(rows, cols)``;
- ``name``: how failures and per-sample values name the sample (default its index).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data.multilabel import Skipped


@dataclass
class Sample:
    """One data item, validated: ``image`` ``(C, H, W)``; ``positives`` the labelled classes
    (``None`` without a label); ``masks`` ``(P, H, W)`` bool and ``boxes`` ``(P, 4)`` with
    ``P`` 1 (one object) or ``n_classes``; ``cells`` ``(n_classes,)`` long with ``grid``."""

    index: int
    name: str
    image: Tensor
    positives: tuple[int, ...] | None = None
    multi_label: bool = False
    masks: Tensor | None = None
    boxes: Tensor | None = None
    cells: Tensor | None = None
    grid: tuple[int, int] | None = None


def _label(label: Any) -> tuple[tuple[int, ...] | None, bool]:
    if label is None:
        return None, False
    t = torch.as_tensor(label)
    if t.dim() == 0 and not t.is_floating_point() and t.dtype != torch.bool:
        return (int(t),), False
    if t.dim() == 1 and bool(((t == 0) | (t == 1)).all()):
        return tuple(int(i) for i in t.nonzero().flatten()), True
    raise ValueError(f"a label must be an int class index or a (n_classes,) 0/1 multi-hot "
                     f"vector, got {t.dtype} of shape {tuple(t.shape)}")


def _planes(value: Any, what: str, per_plane: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    t = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
    t = t.unsqueeze(0) if t.dim() == len(per_plane) else t
    if t.dim() != len(per_plane) + 1 or tuple(t.shape[1:]) != per_plane:
        raise ValueError(f"{what} of shape {tuple(t.shape)} does not fit: expected "
                         f"{per_plane} or (P, *{per_plane}) for the image's size")
    return t.to(dtype)


def _as_mapping(item: Any) -> Mapping[str, Any]:
    """Any accepted item form as a mapping with an ``image`` key."""
    if isinstance(item, Skipped):
        raise ValueError(f"could not be loaded: {item.reason} ({item.path})")
    if isinstance(item, Tensor):
        item = {"image": item}
    elif hasattr(item, "_asdict"):  # a named tuple such as camkit.data.mosaic.MosaicItem
        item = item._asdict()
    elif isinstance(item, (tuple, list)):
        if not 1 <= len(item) <= 4:
            raise ValueError(f"a tuple item must be (image, label[, masks[, boxes]]), got "
                             f"{len(item)} elements")
        item = dict(zip(("image", "label", "mask", "box"), item, strict=False))
    if not isinstance(item, Mapping) or not isinstance(item.get("image"), Tensor):
        raise TypeError("each item must be an image tensor, a tuple (image, label, ...) or a "
                        "dict with an 'image' tensor")
    return item


def as_sample(item: Any, index: int) -> Sample:
    """Validate one data item (see the module docstring for the accepted forms)."""
    item = _as_mapping(item)
    image = item["image"]
    if image.dim() != 3 or not image.is_floating_point():
        raise ValueError(f"the image must be a float (C, H, W) tensor, got {image.dtype} "
                         f"{tuple(image.shape)}")
    size = tuple(image.shape[-2:])
    positives, multi = _label(item.get("label", item.get("labels")))
    sample = Sample(index, str(item.get("name", index)), image, positives, multi)
    if (mask := item.get("mask", item.get("masks"))) is not None:
        sample.masks = _planes(mask, "mask", size, torch.bool)
    if (box := item.get("box", item.get("boxes"))) is not None:
        sample.boxes = _planes(box, "box", (4,), torch.float32)
    if item.get("cells") is not None:
        if item.get("grid") is None:
            raise ValueError("an item with 'cells' needs 'grid' = (rows, cols)")
        sample.cells = torch.as_tensor(item["cells"]).long().flatten()
        rows, cols = item["grid"]
        sample.grid = (int(rows), int(cols))
    return sample


def read_items(data: Any, limit: int | None) -> tuple[Iterable[tuple[int, Any]], int]:
    """``(index, item or the exception raised while reading it)`` pairs and the total count
    (0 when unknown)."""
    if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        total = len(data) if limit is None else min(limit, len(data))

        def indexed() -> Iterable[tuple[int, Any]]:
            for i in range(total):
                try:
                    yield i, data[i]
                except Exception as err:  # reported as a load failure; the run goes on
                    yield i, err

        return indexed(), total
    if not isinstance(data, Iterable):
        raise TypeError(f"data must be a map-style data set or an iterable, got "
                        f"{type(data).__name__}")

    def iterated() -> Iterable[tuple[int, Any]]:
        iterator = iter(data)
        i = 0
        while limit is None or i < limit:
            try:
                item = next(iterator)
            except StopIteration:
                return
            except Exception as err:  # an iterator cannot go on after raising
                yield i, err
                return
            yield i, item
            i += 1

    return iterated(), limit or 0


@dataclass(frozen=True)
class Failure:
    """A sample that could not be loaded, explained or scored: where and why."""

    sample: str
    method: str | None
    stage: str  # "load", "explain" or a metric name
    error: str

    @classmethod
    def of(cls, sample: str, method: str | None, stage: str, error: BaseException) -> Failure:
        """The failure of ``sample`` at ``stage``, described by the exception raised."""
        return cls(sample, method, stage, f"{type(error).__name__}: {error}")


@dataclass
class Batch:
    """Samples stacked on the device, with their targets and method-independent caches.

    ``targets`` ``(B, K)`` (``None`` until the first explanation predicts them) and ``valid``
    ``(B, K)`` (False for padding: multi-label images have different numbers of positives).
    ``outputs`` is the explained model's output on ``x`` when a full-batch explanation gave it
    (so confidences on ``x`` cost no extra forward)."""

    samples: list[Sample]
    x: Tensor
    targets: Tensor | None
    valid: Tensor
    outputs: Any = None
    cache: dict[Any, Any] = field(default_factory=dict)

    @property
    def keys(self) -> list[int]:
        return [s.index for s in self.samples]

    @property
    def classes(self) -> Tensor:
        """The ``(B, K)`` targets, once known."""
        if self.targets is None:
            raise ValueError("the batch has no targets yet (they come with its first "
                             "explanation)")
        return self.targets

    def select(self, rows: Sequence[int]) -> Batch:
        """The sub-batch of ``rows`` (its caches start empty)."""
        index = torch.tensor(list(rows), device=self.x.device, dtype=torch.long)
        targets = None if self.targets is None else self.targets[index]
        return Batch([self.samples[i] for i in rows], self.x[index], targets, self.valid[index])

    @staticmethod
    def concat(batches: Sequence[Batch]) -> Batch:
        """One batch of the samples of ``batches`` (all with targets of one width)."""
        return Batch([s for b in batches for s in b.samples], torch.cat([b.x for b in batches]),
                     torch.cat([b.classes for b in batches]),
                     torch.cat([b.valid for b in batches]))


def _label_targets(samples: list[Sample], device: torch.device) -> tuple[Tensor, Tensor]:
    """``(B, K)`` positives padded with each image's first positive, and the valid mask."""
    width = max(len(s.positives or ()) for s in samples)
    rows = [list(s.positives or ()) for s in samples]
    padded = [r + [r[0]] * (width - len(r)) for r in rows]
    valid = [[True] * len(r) + [False] * (width - len(r)) for r in rows]
    return (torch.tensor(padded, dtype=torch.long, device=device),
            torch.tensor(valid, dtype=torch.bool, device=device))


def stack_samples(samples: list[Sample], device: torch.device, use_labels: bool) -> Batch:
    """``samples`` as one :class:`Batch` on ``device``; with ``use_labels`` their positives are
    the targets, otherwise the targets wait for the first explanation's predictions."""
    shapes = {tuple(s.image.shape) for s in samples}
    if len(shapes) > 1:
        raise ValueError(f"images of one batch differ in shape {sorted(shapes)}; resize them to "
                         "one size (or use batch_size=1)")
    x = torch.stack([s.image for s in samples]).to(device)
    if use_labels:
        targets, valid = _label_targets(samples, device)
        return Batch(samples, x, targets, valid)
    return Batch(samples, x, None, torch.ones(len(samples), 1, dtype=torch.bool, device=device))
