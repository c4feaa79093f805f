"""The report's data: an image with its maps (:class:`ReportItem`), its explained outputs
(:class:`TargetRow`), titled parts (:class:`ReportSection`) and the metrics table.

Plain data, checked once when made: everything the renderer and the PNG figures read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from camkit.viz.overlay import ImageLike, as_rgb_array, resize_map

MetricValue = float | tuple[float, float, float]
"""A metric's mean, or ``(mean, low, high)``: the mean and its 95% confidence interval."""
Metrics = Mapping[str, Mapping[str, MetricValue]]
"""``metrics[method][metric]``; time per image is one more metric column."""


@dataclass(frozen=True)
class TargetRow:
    """One explained output, a row of panels: its label, its score and, for a class, its
    probability."""

    label: str
    score: float | None = None
    probability: float | None = None


@dataclass
class ReportItem:
    """One image of the report.

    Attributes:
        name: the image's title (its file name, say).
        image: the RGB picture the maps explain, ``(H, W, 3)`` uint8 or PIL (stored as uint8).
        targets: the ``K`` explained outputs, one row of panels each.
        maps: ``method -> (K, H', W')`` maps in [0, 1] (numpy or torch); resized to the
            image when ``(H', W') != (H, W)``. A constant map is flagged on its panel.
        raw: ``method -> (K, h, w)`` maps before ReLU, upsampling and normalisation, shown
            by the page's raw view; a method without one shows its normalised map there.
        predictions: ``(class name, probability)``, best first.
        gallery: related pictures with their captions, shown small beside the input (the
            nearest neighbours of an embedding, say), under the heading ``gallery_title``.
    """

    name: str
    image: ImageLike
    targets: Sequence[TargetRow]
    maps: Mapping[str, Any]
    raw: Mapping[str, Any] = field(default_factory=dict)
    predictions: Sequence[tuple[str, float]] = ()
    gallery: Sequence[tuple[ImageLike, str]] = ()
    gallery_title: str = "Related images"

    def __post_init__(self) -> None:
        self.image = as_rgb_array(self.image)
        self.targets = list(self.targets)
        if not self.targets:
            raise ValueError(f"report item {self.name!r} has no targets")
        size = self.image.shape[:2]
        self.maps = {m: _stack(v, len(self.targets), f"maps[{m!r}]", size)
                     for m, v in self.maps.items()}
        self.raw = {m: _stack(v, len(self.targets), f"raw[{m!r}]") for m, v in self.raw.items()}
        extra = sorted(set(self.raw) - set(self.maps))
        if extra:
            raise ValueError(f"raw maps {extra} of {self.name!r} have no normalised maps")
        self.predictions = list(self.predictions)
        self.gallery = [(as_rgb_array(picture), str(caption)) for picture, caption in self.gallery]


@dataclass
class ReportSection:
    """A titled part of the report: a short text, its own metrics table, figures shown at
    their own size with their captions (charts, say), and its images."""

    title: str
    items: Sequence[ReportItem]
    text: str = ""
    metrics: Metrics | None = None
    figures: Sequence[tuple[ImageLike, str]] = ()

    def __post_init__(self) -> None:
        self.items = list(self.items)
        self.figures = [(as_rgb_array(picture), str(caption)) for picture, caption in self.figures]


class HasReport(Protocol):
    """What :func:`camkit.viz.report.report_from_results` needs of a result: its
    :class:`ReportItem`."""

    report: ReportItem


def _stack(value: Any, k: int, what: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """``value`` as float32 ``(k, h, w)`` (NaN → 0), resized to ``size`` when given."""
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    arr = np.nan_to_num(np.asarray(value, dtype=np.float32))
    if arr.ndim != 3 or arr.shape[0] != k:
        raise ValueError(f"{what} must be (K={k}, h, w), got shape {arr.shape}")
    if size is not None and arr.shape[1:] != size:
        arr = np.stack([resize_map(m, *size) for m in arr]).astype(np.float32)
    return arr
