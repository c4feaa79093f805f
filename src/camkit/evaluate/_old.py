"""``camkit.evaluate``: methods × metrics over a data set, as a table with confidence intervals.

The data is a map-style data set (``len`` and ``data[i]``) or an iterable. Each item is a
tensor image, a tuple ``(image, label[, masks[, boxes]])``, or a dict or named tuple (such as
:class:`camkit.data.mosaic.MosaicItem`) with the keys

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

Which classes are explained (``targets``): ``"label"``, every positive class (multi-label) or
the labelled class; ``"predicted"``, the top-1 class; ``"auto"`` (default), the positives for
multi-label data and the prediction otherwise (ALGORITHMS §4.1 choice 3). The task (and so the
confidence, softmax or sigmoid) is read from the first labelled sample unless given.

Every method is timed on its own ``camkit.explain`` call per batch; metrics are timed per
method (a result that two metrics share is timed with the first that needs it). A sample
whose loading, explanation or metric fails is retried alone and, if it fails again, reported
in ``results.failures`` while the run goes on. Per-sample noise is seeded by ``(seed, sample
index)``, so a run is reproducible and independent of the batch size.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import inspect
import io
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import api
from .data.images import Preprocess, load_image, to_tensor
from .data.mosaic import ImageNetGrid
from .data.multilabel import Skipped
from .data.samples import imagenet_samples, quokka, resize_annotated
from .methods import registry
from .metrics.faithfulness import (
    auc,
    deletion_curve,
    drop_percent,
    increase_percent,
    insertion_curve,
    masked_confidence,
)
from .metrics.localization import (
    POINTING_TOLERANCE,
    box_masks,
    energy_share,
    grid_pointing_game,
    pointing_game,
)
from .metrics.robustness import (
    Noise,
    attribution_dots,
    infidelity_from,
    max_sensitivity,
    method_explainer,
    score_drops,
)
from .metrics.scoring import Confidence, confidence_function, make_scorer
from .metrics.stats import Summary, summarize
from .progress import Progress
from .targets import logits_of
from .viz.report import evaluation_metrics, report_items, write_report
from .zoo import LoadedModel, class_index, load_model

# ---------------------------------------------------------------------------------------------
# Samples


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


def as_sample(item: Any, index: int) -> Sample:
    """Validate one data item (see the module docstring for the accepted forms)."""
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


# ---------------------------------------------------------------------------------------------
# Failures and batches


@dataclass(frozen=True)
class Failure:
    """A sample that could not be loaded, explained or scored: where and why."""

    sample: str
    method: str | None
    stage: str  # "load", "explain" or a metric name
    error: str


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


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

    def select(self, rows: Sequence[int]) -> Batch:
        """The sub-batch of ``rows`` (its caches start empty)."""
        index = torch.tensor(list(rows), device=self.x.device, dtype=torch.long)
        targets = None if self.targets is None else self.targets[index]
        return Batch([self.samples[i] for i in rows], self.x[index], targets, self.valid[index])

    @staticmethod
    def concat(batches: Sequence[Batch]) -> Batch:
        """One batch of the samples of ``batches`` (all with targets of one width)."""
        return Batch([s for b in batches for s in b.samples], torch.cat([b.x for b in batches]),
                     torch.cat([b.targets for b in batches]),
                     torch.cat([b.valid for b in batches]))


def _label_targets(samples: list[Sample], device: torch.device) -> tuple[Tensor, Tensor]:
    """``(B, K)`` positives padded with each image's first positive, and the valid mask."""
    width = max(len(s.positives or ()) for s in samples)
    rows = [list(s.positives or ()) for s in samples]
    padded = [r + [r[0]] * (width - len(r)) for r in rows]
    valid = [[True] * len(r) + [False] * (width - len(r)) for r in rows]
    return (torch.tensor(padded, dtype=torch.long, device=device),
            torch.tensor(valid, dtype=torch.bool, device=device))


def _stack(samples: list[Sample], device: torch.device, use_labels: bool) -> Batch:
    shapes = {tuple(s.image.shape) for s in samples}
    if len(shapes) > 1:
        raise ValueError(f"images of one batch differ in shape {sorted(shapes)}; resize them to "
                         "one size (or use batch_size=1)")
    x = torch.stack([s.image for s in samples]).to(device)
    if use_labels:
        targets, valid = _label_targets(samples, device)
        return Batch(samples, x, targets, valid)
    return Batch(samples, x, None, torch.ones(len(samples), 1, dtype=torch.bool, device=device))


# ---------------------------------------------------------------------------------------------
# Regions for the localisation metrics: (B, K, H, W) bool and a (B, K) "annotated" flag


def _region_planes(sample: Sample, classes: list[int], kind: str,
                   partners: Mapping[int, int] | None) -> tuple[Tensor, list[bool]]:
    size = tuple(sample.image.shape[-2:])
    stack = sample.masks if kind != "box" else (
        None if sample.boxes is None else box_masks(sample.boxes, size))
    empty = torch.zeros(len(classes), *size, dtype=torch.bool)
    if stack is None:
        return empty, [False] * len(classes)
    stack = stack.cpu()
    if kind != "leak":
        planes = [stack[0] if stack.shape[0] == 1 else
                  stack[c] if c < stack.shape[0] else torch.zeros(size, dtype=torch.bool)
                  for c in classes]
        return torch.stack(planes), [bool(p.any()) for p in planes]
    if stack.shape[0] == 1:  # one object mask: no other objects to leak onto
        return empty, [False] * len(classes)
    present = set(sample.positives or ())
    planes, known = [], []
    for c in classes:
        others = [o for o in present - {c}
                  if o < stack.shape[0] and (partners is None or partners.get(c) == o)]
        planes.append(stack[others].any(dim=0) if others else torch.zeros(size, dtype=torch.bool))
        known.append(bool(planes[-1].any()))
    return torch.stack(planes), known


def regions(batch: Batch, kind: str, partners: Mapping[int, int] | None = None
            ) -> tuple[Tensor, Tensor]:
    """Regions of each target: ``kind`` ``"mask"``, ``"box"``, or ``"leak"`` (the union of the
    masks of the image's other positive classes, or only of ``partners[c]``); returns
    ``(regions (B, K, H, W) bool, annotated (B, K) bool)``, cached per batch."""
    key = ("regions", kind, None if partners is None else tuple(sorted(partners.items())))
    if key not in batch.cache:
        targets = batch.targets.tolist()
        parts = [_region_planes(s, t, kind, partners)
                 for s, t in zip(batch.samples, targets, strict=True)]
        device = batch.x.device
        batch.cache[key] = (torch.stack([p for p, _ in parts]).to(device),
                            torch.tensor([k for _, k in parts], dtype=torch.bool, device=device))
    return batch.cache[key]


def _nan_where_unknown(values: Tensor, known: Tensor) -> Tensor:
    return values.where(known, values.new_tensor(float("nan")))


# ---------------------------------------------------------------------------------------------
# Metrics as the harness runs them


@dataclass
class Run:
    """One method's maps on one batch, with everything a metric needs."""

    method: str
    batch: Batch
    maps: Tensor  # (B, K, H, W)
    model: nn.Module  # the explained model
    scoring_model: nn.Module  # the one model that scores every method
    confidence: Confidence
    max_batch: int
    seed: int
    explainer: Callable[[Tensor, Tensor], Tensor]
    cache: dict[Any, Any] = field(default_factory=dict)

    @property
    def x(self) -> Tensor:
        return self.batch.x

    @property
    def targets(self) -> Tensor:
        return self.batch.targets

    def select(self, rows: Sequence[int]) -> Run:
        index = torch.tensor(list(rows), device=self.maps.device, dtype=torch.long)
        return replace(self, batch=self.batch.select(rows), maps=self.maps[index], cache={})

    def base(self) -> Tensor:
        """``(B, K)`` confidences of the targets on ``x`` (shared by all methods)."""
        if "base" not in self.batch.cache:
            outputs = self.batch.outputs
            if outputs is not None and self.scoring_model is self.model:
                logits = logits_of(outputs).float()
                base = self.confidence(logits).gather(1, self.targets.to(logits.device))
            else:
                base = make_scorer(self.scoring_model, self.confidence, self.max_batch)(
                    self.x, self.targets)
            self.batch.cache["base"] = base
        return self.batch.cache["base"]

    def masked(self) -> Tensor:
        """``(B, K)`` confidences on the explanation-masked images (this method's)."""
        if "masked" not in self.cache:
            self.cache["masked"] = masked_confidence(
                self.scoring_model, self.x, self.maps, self.targets,
                confidence=self.confidence, max_batch=self.max_batch)
        return self.cache["masked"]


def _average_drop(run: Run) -> Tensor:
    return drop_percent(run.base(), run.masked())


def _increase(run: Run) -> Tensor:
    return increase_percent(run.base(), run.masked())


def _deletion(run: Run, steps: int = 16, baseline: str | float = "zero") -> Tensor:
    return auc(deletion_curve(run.scoring_model, run.x, run.maps, run.targets, steps=steps,
                              baseline=baseline, confidence=run.confidence,
                              max_batch=run.max_batch))


def _insertion(run: Run, steps: int = 16, baseline: str | float = "blur") -> Tensor:
    return auc(insertion_curve(run.scoring_model, run.x, run.maps, run.targets, steps=steps,
                               baseline=baseline, confidence=run.confidence,
                               max_batch=run.max_batch))


def _infidelity_terms(run: Run, sigma: float, n_samples: int) -> tuple[Tensor, Tensor]:
    """Channel-summed noise ``(B, n, H, W)`` and score drops ``(B, n, K)``: the same
    perturbations for every method, so computed once per batch."""
    key = ("infidelity", sigma, n_samples)
    if key not in run.batch.cache:
        draws = Noise("gaussian", sigma, run.seed).sample(run.x, n_samples, run.batch.keys)
        drops = score_drops(run.scoring_model, run.x, draws, run.targets,
                            confidence=run.confidence, max_batch=run.max_batch, base=run.base())
        run.batch.cache[key] = (draws.sum(dim=2), drops)
    return run.batch.cache[key]


def _infidelity(run: Run, sigma: float = 0.2, n_samples: int = 10) -> Tensor:
    sums, drops = _infidelity_terms(run, sigma, n_samples)
    return infidelity_from(attribution_dots(sums, run.maps), drops, normalize=False)


def _infidelity_normalized(run: Run, sigma: float = 0.2, n_samples: int = 10) -> Tensor:
    sums, drops = _infidelity_terms(run, sigma, n_samples)
    return infidelity_from(attribution_dots(sums, run.maps), drops, normalize=True)


def _sensitivity(run: Run, radius: float = 0.02, n_samples: int = 10,
                 relative: bool = True) -> Tensor:
    return max_sensitivity(run.explainer, run.x, run.maps, run.targets,
                           noise=Noise("uniform", radius, run.seed), n_samples=n_samples,
                           relative=relative, keys=run.batch.keys, max_batch=run.max_batch)


def _energy_in(run: Run, kind: str, partners: Mapping[int, int] | None = None) -> Tensor:
    region, known = regions(run.batch, kind, partners)
    return _nan_where_unknown(energy_share(run.maps, region), known)


def _energy(kind: str) -> Callable[[Run], Tensor]:
    def compute(run: Run) -> Tensor:
        return _energy_in(run, kind)

    return compute


def _pointing(kind: str) -> Callable[..., Tensor]:
    def compute(run: Run, tolerance: int = POINTING_TOLERANCE) -> Tensor:
        region, known = regions(run.batch, kind)
        return _nan_where_unknown(pointing_game(run.maps, region, tolerance), known)

    return compute


def _grid_pointing(run: Run) -> Tensor:
    grids = {s.grid for s in run.batch.samples}
    if len(grids) != 1 or None in grids:
        raise ValueError(f"grid-pointing needs samples with 'cells' and one grid per batch, got "
                         f"grids {sorted(map(str, grids))}")
    cells = torch.stack([s.cells for s in run.batch.samples]).to(run.maps.device)
    inside = run.targets < cells.shape[1]
    cell = cells.gather(1, run.targets.clamp(max=cells.shape[1] - 1)).where(inside, -1)
    return _nan_where_unknown(grid_pointing_game(run.maps, cell, grids.pop()), cell >= 0)


def _energy_leak(run: Run, partners: Mapping[int, int] | None = None) -> Tensor:
    return _energy_in(run, "leak", partners)


@dataclass(frozen=True)
class MetricSpec:
    """A metric as the harness runs it: ``compute(run, **options) -> (B, K)``; NaN marks a
    value that is undefined for that sample (no annotation, near-zero confidence)."""

    name: str
    summary: str
    higher_is_better: bool
    compute: Callable[..., Tensor]

    @property
    def options(self) -> list[str]:
        return list(inspect.signature(self.compute).parameters)[1:]


METRICS: dict[str, MetricSpec] = {m.name: m for m in [
    MetricSpec("average-drop", "Average Drop %: 100·max(0, Y−O)/Y on the map-masked image",
               False, _average_drop),
    MetricSpec("increase-in-confidence", "% of images whose confidence rises when masked",
               True, _increase),
    MetricSpec("deletion", "AUC of the confidence while the most salient pixels are zeroed",
               False, _deletion),
    MetricSpec("insertion", "AUC of the confidence while salient pixels return onto a blur",
               True, _insertion),
    MetricSpec("infidelity", "E[(IᵀΦ − (f(x) − f(x−I)))²], I ~ N(0, 0.2²), 10 draws",
               False, _infidelity),
    MetricSpec("infidelity-normalized", "infidelity with Φ rescaled by the optimal β",
               False, _infidelity_normalized),
    MetricSpec("sensitivity", "max ‖Φ(y) − Φ(x)‖/‖Φ(x)‖ over 10 y in the L∞ ball of 0.02",
               False, _sensitivity),
    MetricSpec("energy-mask", "share of the map's energy inside the object mask", True,
               _energy("mask")),
    MetricSpec("energy-box", "share of the map's energy inside the object box", True,
               _energy("box")),
    MetricSpec("pointing-mask", "the map's maximum lies on the mask (15 px tolerance)", True,
               _pointing("mask")),
    MetricSpec("pointing-box", "the map's maximum lies in the box (15 px tolerance)", True,
               _pointing("box")),
    MetricSpec("grid-pointing", "share of the map's energy in the class's grid cell", True,
               _grid_pointing),
    MetricSpec("energy-leak", "share of the map's energy on the other objects present", False,
               _energy_leak),
]}
FAITHFULNESS = ("average-drop", "increase-in-confidence", "deletion", "insertion")
ROBUSTNESS = ("infidelity", "infidelity-normalized", "sensitivity")
DEFAULT_METRICS = FAITHFULNESS + ROBUSTNESS
REGION_METRICS = {"mask": ("energy-mask", "pointing-mask"), "box": ("energy-box", "pointing-box"),
                  "cells": ("grid-pointing",), "leak": ("energy-leak",)}


def _metric(name: str) -> MetricSpec:
    if name not in METRICS:
        close = difflib.get_close_matches(name, list(METRICS), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown metric {name!r}.{hint} Available: {', '.join(METRICS)}.")
    return METRICS[name]


def available_metrics() -> dict[str, str]:
    """Metric names with one-line descriptions (↑ higher is better, ↓ lower)."""
    return {m.name: f"{'↑' if m.higher_is_better else '↓'} {m.summary}" for m in METRICS.values()}


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class Results:
    """What :func:`evaluate` measured.

    ``values[method][metric]``: per-(image, class) values aligned with ``pairs[method]``
    (``(sample name, class)``; NaN where undefined or failed); ``explain_seconds[method]`` and
    ``metric_seconds[method][metric]``: total seconds; ``images[method]``: images explained;
    ``constant[method]``: maps that came out constant (zeros); ``harness_seconds``: wall time
    spent outside explanations and metrics (loading, stacking, bookkeeping)."""

    methods: list[str]
    metrics: list[str]
    pairs: dict[str, list[tuple[str, int]]]
    values: dict[str, dict[str, np.ndarray]]
    explain_seconds: dict[str, float]
    metric_seconds: dict[str, dict[str, float]]
    images: dict[str, int]
    constant: dict[str, int]
    failures: list[Failure]
    settings: dict[str, Any]
    wall_seconds: float = 0.0
    harness_seconds: float = 0.0

    def summary(self, method: str, metric: str) -> Summary:
        """Mean, 95 % confidence interval and counts of one cell."""
        return summarize(self.values[method][metric])

    def seconds_per_image(self, method: str, metric: str | None = None) -> float:
        """Explanation time per image of ``method``, or that of ``metric`` on its maps."""
        total = (self.explain_seconds[method] if metric is None
                 else self.metric_seconds[method][metric])
        return total / self.images[method] if self.images[method] else math.nan

    def table(self) -> list[dict[str, Any]]:
        """One row per method × metric: mean, CI, n, undefined, times (ms per image)."""
        rows = []
        for method in self.methods:
            for metric in self.metrics:
                s = self.summary(method, metric)
                rows.append({
                    "method": method, "metric": metric,
                    "higher_is_better": METRICS[metric].higher_is_better,
                    "mean": s.mean, "ci95_low": s.low, "ci95_high": s.high, "n": s.n,
                    "undefined": s.undefined,
                    "metric_ms_per_image": 1000 * self.seconds_per_image(method, metric),
                    "explain_ms_per_image": 1000 * self.seconds_per_image(method),
                })
        return rows

    def to_csv(self) -> str:
        """:meth:`table` as CSV text."""
        rows = self.table()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["method"])
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()

    def to_json(self) -> str:
        """Settings, the table, timings, failures and every per-sample value (NaN → null)."""
        def clean(values: np.ndarray) -> list[float | None]:
            return [float(v) if math.isfinite(v) else None for v in values]

        document = {
            "settings": self.settings,
            "rows": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                      for k, v in row.items()} for row in self.table()],
            "seconds": {"wall": self.wall_seconds, "harness": self.harness_seconds,
                        "explain": self.explain_seconds, "metrics": self.metric_seconds},
            "images": self.images, "constant_maps": self.constant,
            "failures": [vars(f) for f in self.failures],
            "per_sample": {m: {"pairs": [list(p) for p in self.pairs[m]],
                               **{k: clean(v) for k, v in self.values[m].items()}}
                           for m in self.methods},
        }
        return json.dumps(document, indent=1, default=str)

    def to_markdown(self) -> str:
        """The method × metric table (mean ± 95 % CI half-width), times and failures."""
        head = ["method", *[f"{m} {'↑' if METRICS[m].higher_is_better else '↓'}"
                            for m in self.metrics], "explain ms/img"]
        lines = [_md_row(head), _md_row(["---"] + ["---:"] * (len(head) - 1))]
        for method in self.methods:
            cells = [_cell(self.summary(method, m), len(self.pairs[method])) for m in self.metrics]
            lines.append(_md_row([method, *cells, _ms(self.seconds_per_image(method))]))
        timing = [_md_row(["method", *self.metrics]),
                  _md_row(["---"] + ["---:"] * len(self.metrics))]
        for method in self.methods:
            timing.append(_md_row([method, *[_ms(self.seconds_per_image(method, m))
                                             for m in self.metrics]]))
        settings = "; ".join(f"{k}: {v}" for k, v in self.settings.items())
        unit = "runs' means" if "runs" in self.settings else "(image, class) pairs"
        parts = [
            "# Evaluation", "", settings, "",
            f"Mean ± half-width of the 95 % confidence interval (Student t over the {unit}); "
            "`n` is shown where some values were undefined (no annotation, confidence below "
            "1e-3) or failed. ↑ higher is better, ↓ lower is better.", "",
            *lines, "", "## Metric time per image (ms)", "", *timing, "",
            f"Wall time {self.wall_seconds:.2f} s, of which {self.harness_seconds:.2f} s "
            "outside explanations and metrics (loading, stacking, bookkeeping). Constant maps "
            f"(returned as zeros): {self.constant}.",
        ]
        if self.failures:
            parts += ["", f"## Failures ({len(self.failures)})", ""]
            parts += [f"- `{f.sample}` {f.method or ''} {f.stage}: {f.error}"
                      for f in self.failures]
        return "\n".join(parts) + "\n"

    def save(self, out: str | Path) -> dict[str, Path]:
        """Write ``results.md``, ``results.csv`` and ``results.json`` into ``out``."""
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {kind: folder / f"results.{kind}" for kind in ("md", "csv", "json")}
        paths["md"].write_text(self.to_markdown(), encoding="utf-8")
        paths["csv"].write_text(self.to_csv(), encoding="utf-8")
        paths["json"].write_text(self.to_json(), encoding="utf-8")
        return paths

    @classmethod
    def combine(cls, runs: Sequence[Results], labels: Sequence[str] | None = None) -> Results:
        """Runs of the same methods and metrics (e.g. one per seed) as one table whose unit is
        the run: each cell's values are the runs' means, so its interval is the spread across
        runs. Times are totals over the runs."""
        if not runs:
            raise ValueError("combine needs at least one Results")
        first = runs[0]
        labels = list(labels or [f"run {i}" for i in range(len(runs))])
        if any(r.methods != first.methods or r.metrics != first.metrics for r in runs):
            raise ValueError("combine needs runs of the same methods and metrics")
        methods, metrics = first.methods, first.metrics
        return cls(
            methods, metrics,
            pairs={m: [(label, -1) for label in labels] for m in methods},
            values={m: {k: np.array([r.summary(m, k).mean for r in runs]) for k in metrics}
                    for m in methods},
            explain_seconds={m: sum(r.explain_seconds[m] for r in runs) for m in methods},
            metric_seconds={m: {k: sum(r.metric_seconds[m][k] for r in runs) for k in metrics}
                            for m in methods},
            images={m: sum(r.images[m] for r in runs) for m in methods},
            constant={m: sum(r.constant[m] for r in runs) for m in methods},
            failures=[f for r in runs for f in r.failures],
            settings={**first.settings, "runs": labels},
            wall_seconds=sum(r.wall_seconds for r in runs),
            harness_seconds=sum(r.harness_seconds for r in runs),
        )


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _ms(seconds: float) -> str:
    return "—" if not math.isfinite(seconds) else f"{1000 * seconds:.1f}"


def _cell(s: Summary, pairs: int) -> str:
    if s.n == 0:
        return "—"
    text = f"{s.mean:.4g}" if not math.isfinite(s.high) else f"{s.mean:.4g} ± {s.high - s.mean:.2g}"
    return text if s.n == pairs else f"{text} (n {s.n})"


# ---------------------------------------------------------------------------------------------
# The harness


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _items(data: Any, limit: int | None) -> tuple[Iterable[tuple[int, Any]], int]:
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


class _Evaluation:
    """The state of one :func:`evaluate` call."""

    def __init__(self, model: nn.Module, methods: list[str], metrics: list[str],
                 layer: Any, *, targets: str, task: str | None,
                 confidence: str | Confidence | None, scoring_model: nn.Module | None,
                 method_options: Mapping[str, Mapping[str, Any]],
                 metric_options: Mapping[str, Mapping[str, Any]], max_batch: int,
                 seed: int) -> None:
        self.model, self.methods, self.metrics, self.layer = model, methods, metrics, layer
        self.target_mode, self.task, self.confidence_spec = targets, task, confidence
        self.scoring_model = scoring_model or model
        self.method_options, self.metric_options = method_options, metric_options
        self.max_batch, self.seed = max_batch, seed
        self.device = _model_device(model)
        self.confidence: Confidence | None = None
        self.failures: list[Failure] = []
        self.pairs: dict[str, list[tuple[str, int]]] = {m: [] for m in methods}
        self.values: dict[str, dict[str, list[Tensor]]] = {
            m: {k: [] for k in metrics} for m in methods}
        self.explain_seconds = dict.fromkeys(methods, 0.0)
        self.metric_seconds = {m: dict.fromkeys(metrics, 0.0) for m in methods}
        self.images = dict.fromkeys(methods, 0)
        self.constant = dict.fromkeys(methods, 0)
        self.without_targets = 0

    # -- task, confidence and targets ----------------------------------------------------------

    def _settle_task(self, samples: list[Sample]) -> None:
        if self.confidence is not None:
            return
        if self.task is None:
            labelled = next((s for s in samples if s.positives is not None), None)
            self.task = "multi-label" if labelled and labelled.multi_label else "single-label"
        self.confidence = confidence_function(self.confidence_spec, self.task)
        if self.target_mode == "auto":
            self.target_mode = "label" if self.task == "multi-label" else "predicted"

    def explainable(self, samples: list[Sample]) -> list[Sample]:
        """The samples that have targets: without a positive class there is nothing to explain
        when explaining labels (counted, not a failure)."""
        self._settle_task(samples)
        if self.target_mode != "label":
            return samples
        kept = [s for s in samples if s.positives]
        self.without_targets += len(samples) - len(kept)
        return kept

    def stack(self, samples: list[Sample]) -> Batch:
        return _stack(samples, self.device, self.target_mode == "label")

    # -- explanations ----------------------------------------------------------------------

    def _explain(self, batch: Batch, method: str) -> tuple[Batch, Tensor] | None:
        """The maps ``(B', K, H, W)`` of the samples that could be explained, and those
        samples as a batch with their targets (predicted ones filled in)."""
        options = self.method_options.get(method, {})
        try:
            start = _clock(self.device)
            expl = api.explain(self.model, batch.x, batch.targets, (method,), self.layer,
                               seed=self.seed, **options)
            self.explain_seconds[method] += _clock(self.device) - start
        except Exception as err:
            if len(batch.samples) == 1:
                self.failures.append(Failure(batch.samples[0].name, method, "explain",
                                             _describe(err)))
                return None
            parts = [self._explain(batch.select([i]), method) for i in range(len(batch.samples))]
            done = [p for p in parts if p is not None]
            if not done:
                return None
            return Batch.concat([b for b, _ in done]), torch.cat([m for _, m in done])
        if batch.targets is None:  # predicted by this explanation; later methods reuse them
            batch.targets = expl.targets
        batch.outputs = expl.outputs
        self.constant[method] += int(expl.constant[method].sum())
        return batch, expl[method]

    # -- metrics ---------------------------------------------------------------------------

    def _metric(self, run: Run, name: str) -> Tensor:
        """``(B, K)`` values; a failing batch is retried sample by sample (NaN for failures)."""
        try:
            return METRICS[name].compute(run, **self.metric_options.get(name, {}))
        except Exception as err:
            if len(run.batch.samples) == 1:
                self.failures.append(Failure(run.batch.samples[0].name, run.method, name,
                                             _describe(err)))
                return torch.full(run.targets.shape, math.nan, device=run.maps.device)
            return torch.cat([self._metric(run.select([i]), name)
                              for i in range(len(run.batch.samples))])

    def evaluate_batch(self, batch: Batch) -> None:
        for method in self.methods:
            explained = self._explain(batch, method)
            if explained is not None:
                done, maps = explained
                self._score(Run(method, done, maps, self.model, self.scoring_model,
                                self.confidence, self.max_batch, self.seed,
                                self._explainer(method)))

    def _explainer(self, method: str) -> Callable[[Tensor, Tensor], Tensor]:
        return method_explainer(self.model, method, self.layer, seed=self.seed,
                                **self.method_options.get(method, {}))

    def _score(self, run: Run) -> None:
        method, valid = run.method, run.batch.valid
        self.images[method] += len(run.batch.samples)
        classes = run.targets[valid].tolist()
        owners = valid.nonzero()[:, 0].tolist()
        self.pairs[method] += [(run.batch.samples[b].name, c)
                               for b, c in zip(owners, classes, strict=True)]
        for name in self.metrics:
            start = _clock(self.device)
            values = self._metric(run, name)
            self.metric_seconds[method][name] += _clock(self.device) - start
            self.values[method][name].append(values[valid].detach().float().cpu())

    def results(self, settings: dict[str, Any], wall: float) -> Results:
        values = {m: {k: (torch.cat(v).numpy().astype(np.float64) if v else np.zeros(0))
                      for k, v in per.items()} for m, per in self.values.items()}
        spent = sum(self.explain_seconds.values()) + sum(
            sum(per.values()) for per in self.metric_seconds.values())
        settings = {**settings, "task": self.task, "targets": self.target_mode}
        if self.without_targets:
            settings["skipped (no positive class)"] = self.without_targets
        return Results(self.methods, self.metrics, self.pairs, values, self.explain_seconds,
                       self.metric_seconds, self.images, self.constant, self.failures,
                       settings, wall, wall - spent)


def _check_options(options: Mapping[str, Mapping[str, Any]] | None, names: list[str],
                   what: str) -> dict[str, Mapping[str, Any]]:
    options = dict(options or {})
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"{what}_options name {unknown}, which are not among the {what}s "
                         f"evaluated: {names}")
    return options


def evaluate(
    model: nn.Module,
    data: Any,
    methods: str | Sequence[str] = ("gradcam",),
    metrics: str | Sequence[str] = DEFAULT_METRICS,
    layer: Any = None,
    *,
    targets: str = "auto",
    task: str | None = None,
    confidence: str | Confidence | None = None,
    scoring_model: nn.Module | None = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    metric_options: Mapping[str, Mapping[str, Any]] | None = None,
    batch_size: int = 8,
    max_batch: int = 32,
    seed: int = 0,
    limit: int | None = None,
    progress: bool | None = None,
    out: str | Path | None = None,
) -> Results:
    """Run every method on every sample of ``data`` and score the maps with every metric.

    Args:
        model: the network to explain (borrowed; in eval mode for every call).
        data: a map-style data set or an iterable of items (see the module docstring).
        methods: method names (``camkit.available_methods()``).
        metrics: metric names (:func:`available_metrics`).
        layer: the target layer for ``camkit.explain``.
        targets: ``"auto"``, ``"label"`` or ``"predicted"`` (see the module docstring).
        task: ``"single-label"`` or ``"multi-label"``; ``None`` reads it from the labels.
        confidence: ``"softmax"``, ``"sigmoid"``, ``"logit"`` or a function of the logits;
            ``None`` picks the task's.
        scoring_model: the one model that scores every method (default ``model``).
        method_options: per method, keyword options for ``camkit.explain``
            (``{"mcam": {"memory": memory}}``).
        metric_options: per metric, keyword options (``{"deletion": {"steps": 32}}``,
            ``{"infidelity": {"sigma": 0.1, "n_samples": 20}}``,
            ``{"pointing-mask": {"tolerance": 0}}``, ``{"energy-leak": {"partners": {0: 1}}}``).
        batch_size: images per ``camkit.explain`` call.
        max_batch: images per forward pass inside the metrics.
        seed: seeds the methods (``explain(seed=...)``) and the metrics' noise.
        limit: evaluate only the first ``limit`` items.
        progress: progress bar on stderr (``None``: when the run takes more than a few s).
        out: if given, write ``results.md``, ``results.csv`` and ``results.json`` there.
    """
    method_names = [methods] if isinstance(methods, str) else list(dict.fromkeys(methods))
    metric_names = [metrics] if isinstance(metrics, str) else list(dict.fromkeys(metrics))
    for method in method_names:
        registry.get_method(method)
    for name in metric_names:
        _metric(name)
    metric_opts = _check_options(metric_options, metric_names, "metric")
    for name, opts in metric_opts.items():
        unknown = sorted(set(opts) - set(METRICS[name].options))
        if unknown:
            raise ValueError(f"metric {name!r} has no option(s) {unknown}; it accepts "
                             f"{METRICS[name].options or 'none'}")
    if targets not in ("auto", "label", "predicted"):
        raise ValueError(f"targets must be 'auto', 'label' or 'predicted', got {targets!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    state = _Evaluation(model, method_names, metric_names, layer, targets=targets, task=task,
                        confidence=confidence, scoring_model=scoring_model,
                        method_options=_check_options(method_options, method_names, "method"),
                        metric_options=metric_opts, max_batch=max_batch, seed=seed)
    start = _clock(state.device)
    items, total = _items(data, limit)
    seen = 0
    with Progress(total, "evaluate", progress, unit="img") as bar:
        pending: list[Sample] = []
        for index, item in items:
            seen += 1
            try:
                if isinstance(item, Exception):
                    raise item
                pending.append(as_sample(item, index))
            except Exception as err:
                state.failures.append(Failure(str(index), None, "load", _describe(err)))
            if len(pending) == batch_size:
                _run_batch(state, pending)
                bar.update(len(pending))
                pending = []
        if pending:
            _run_batch(state, pending)
            bar.update(len(pending))
    settings = {"methods": method_names, "metrics": metric_names, "samples": seen,
                "layer": layer if isinstance(layer, (str, type(None))) else type(layer).__name__,
                "batch_size": batch_size, "seed": seed, "device": str(state.device),
                "metric_options": {k: {o: str(v) for o, v in opts.items()}
                                   for k, opts in metric_opts.items()}}
    results = state.results(settings, _clock(state.device) - start)
    if out is not None:
        results.save(out)
    return results


def _run_batch(state: _Evaluation, samples: list[Sample]) -> None:
    samples = state.explainable(samples)
    if not samples:
        return
    try:
        batch = state.stack(samples)
    except Exception as err:  # e.g. images of different sizes: go one by one
        if len(samples) == 1:
            state.failures.append(Failure(samples[0].name, None, "load", _describe(err)))
            return
        for sample in samples:
            _run_batch(state, [sample])
        return
    state.evaluate_batch(batch)


# ---------------------------------------------------------------------------------------------
# Data sets named on the command line, and the CLI


class ImageFiles:
    """Image files with optional labels and masks, preprocessed for a model on access:
    ``data[i] = {"image", "label", "name"[, "mask"]}``. A mask is a sibling file
    ``NAME.mask.png`` (non-zero pixels = object), resized exactly as the image."""

    def __init__(self, files: Sequence[tuple[Path, int | None]], loaded: LoadedModel) -> None:
        self.files, self.preprocess = list(files), loaded.preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.files[index]
        image = load_image(path)
        item: dict[str, Any] = {"image": self.preprocess(image), "label": label,
                                "name": path.name}
        mask_path = path.with_name(path.stem + ".mask.png")
        if mask_path.exists():
            mask = np.asarray(load_image(mask_path)).any(axis=2)
            item["mask"] = self.preprocess.plan(image).mask(mask)
        return item


def _folder_files(folder: Path, class_names: Sequence[str]) -> list[tuple[Path, int | None]]:
    """Images directly in ``folder`` (unlabelled) and in class sub-folders (named by class name
    or index), skipping ``*.mask.png``."""
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder} (the spec is folder:DIR)")

    def images(directory: Path) -> list[Path]:
        return sorted(p for p in directory.iterdir()
                      if p.is_file() and not p.name.endswith(".mask.png")
                      and not p.name.startswith("."))

    files: list[tuple[Path, int | None]] = [(p, None) for p in images(folder)]
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        label = class_index(sub.name, class_names)
        files += [(p, label) for p in images(sub)]
    if not files:
        raise ValueError(f"{folder} holds no image files")
    return files


def data_from_spec(spec: str, loaded: LoadedModel) -> tuple[Any, tuple[str, ...]]:
    """A data set for ``loaded`` from a command-line spec, and the region kinds it annotates:
    ``imagenet-samples`` (foolbox's 20 labelled ImageNet photos), ``imagenet-grid[:N]`` (``N``,
    default 8, 2×2 grid mosaics of those photos for the grid pointing game), ``quokka``
    (imgaug's photo with its box and mask), ``folder:DIR`` (see :func:`_folder_files`; masks
    from ``NAME.mask.png``)."""
    kind, _, count = spec.partition(":")
    if kind == "imagenet-grid" and (count.isdigit() or not count):
        grids = ImageNetGrid(int(count or 8), loaded.preprocess, class_names=loaded.class_names,
                             width=len(loaded.class_names))
        return grids, ("cells",)
    if spec == "imagenet-samples":
        files = [(s.path, s.label) for s in imagenet_samples()]
        return ImageFiles(files, loaded), ()
    if spec == "quokka":
        p = loaded.preprocess
        photo = resize_annotated(quokka(), p.size, p.crop_fraction, p.resample)
        item = {"image": to_tensor(photo.image, p.mean, p.std), "mask": photo.mask,
                "box": torch.tensor(photo.box), "name": "quokka"}
        return [item], ("mask", "box")
    if spec.startswith("folder:"):
        files = _folder_files(Path(spec.removeprefix("folder:")), loaded.class_names)
        has_masks = any(p.with_name(p.stem + ".mask.png").exists() for p, _ in files)
        return ImageFiles(files, loaded), ("mask",) if has_masks else ()
    raise ValueError(f"unknown data spec {spec!r}; use imagenet-samples, imagenet-grid[:N], "
                     "quokka or folder:DIR")


def _picture(x: Tensor, preprocess: Preprocess) -> np.ndarray:
    """The ``(H, W, 3)`` uint8 picture of a ``(3, H, W)`` tensor normalised by ``preprocess``."""
    mean, std = (x.new_tensor(v).view(3, 1, 1) for v in (preprocess.mean, preprocess.std))
    rgb = ((x * std + mean).clamp(0, 1) * 255).round().byte()
    return rgb.permute(1, 2, 0).cpu().numpy()


def write_evaluation_report(path: str | Path, results: Results, model: nn.Module, data: Any,
                            layer: Any, loaded: LoadedModel, images: int = 4) -> Path:
    """The HTML report of an evaluation: the method × metric table of ``results`` (mean, 95 %
    interval, explanation time), the first ``images`` samples of ``data`` explained by every
    evaluated method (for the targets the run used: labels or predictions), and the settings.

    ``data``'s images are tensors normalised by ``loaded.preprocess``, as
    :func:`data_from_spec` gives them."""
    samples = [as_sample(data[i], i) for i in range(min(images, len(data)))]
    items = []
    if samples:
        batch = _stack(samples, _model_device(model), results.settings["targets"] == "label")
        expl = api.explain(model, batch.x, batch.targets, results.methods, layer,
                           seed=results.settings["seed"])
        items = report_items(expl, [_picture(x, loaded.preprocess) for x in batch.x],
                             loaded.class_names, names=[s.name for s in samples])
    return write_report(path, items, results.settings, evaluation_metrics(results),
                        title="camkit evaluation")


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def metrics_for(text: str, kinds: Sequence[str]) -> list[str]:
    """The ``--metrics`` list; ``auto`` = :data:`DEFAULT_METRICS` and the localisation metrics
    of the region kinds the data annotates."""
    names = _names(text)
    if names != ["auto"]:
        return names
    return [*DEFAULT_METRICS, *(m for kind in kinds for m in REGION_METRICS[kind])]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The ``camkit evaluate`` subcommand."""
    ev = subparsers.add_parser(
        "evaluate", help="score methods with metrics over a data set",
        description="Explain every image with every method, score the maps with every metric "
                    "and write a method × metric table (mean and 95 %% CI, time per image) as "
                    "results.md, results.csv and results.json.")
    ev.add_argument("--data", required=True,
                    help="imagenet-samples, imagenet-grid[:N], quokka or folder:DIR")
    ev.add_argument("--methods", default="gradcam", help="comma-separated (camkit methods)")
    ev.add_argument("--metrics", default="auto",
                    help=f"comma-separated from {', '.join(METRICS)}; auto: "
                         f"{', '.join(DEFAULT_METRICS)} and the localisation metrics the data "
                         "has regions for")
    ev.add_argument("--out", default="runs/evaluate", help="output folder")
    ev.add_argument("--report", default=None, metavar="HTML",
                    help="also write a self-contained HTML report: the table, the first "
                         "--report-images images explained by every method, the settings")
    ev.add_argument("--report-images", type=int, default=4, metavar="N",
                    help="images shown in the --report (default 4)")
    ev.add_argument("--arch", default="efficientnet-lite0", help="as for camkit explain")
    ev.add_argument("--weights", default=None, help="a local state dict for --arch")
    ev.add_argument("--layer", default=None, help="target layer; default per model")
    ev.add_argument("--targets", default="auto", choices=("auto", "label", "predicted"))
    ev.add_argument("--confidence", default="auto", choices=("auto", "softmax", "sigmoid",
                                                             "logit"))
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--limit", type=int, default=None, help="only the first N images")
    ev.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bar on stderr (default: for runs longer than a few s)")
    ev.set_defaults(run=run)
    return ev


def run(args: argparse.Namespace) -> int:
    """Run ``camkit evaluate``: the table to stdout, problems to stderr; exit status 1 when
    some samples failed (their results are still written)."""
    loaded = load_model(args.arch, args.weights)
    data, kinds = data_from_spec(args.data, loaded)
    results = evaluate(
        loaded.model, data, _names(args.methods), metrics_for(args.metrics, kinds),
        args.layer or loaded.layer,
        targets=args.targets, confidence=None if args.confidence == "auto" else args.confidence,
        batch_size=args.batch_size, seed=args.seed, limit=args.limit, progress=args.progress)
    results.settings = {"data": args.data, "model": args.arch, **results.settings}
    paths = results.save(args.out)
    if args.report:
        paths["html"] = write_evaluation_report(args.report, results, loaded.model, data,
                                                args.layer or loaded.layer, loaded,
                                                args.report_images)
    print(results.to_markdown())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    for failure in results.failures:
        print(f"camkit: {failure.sample}: {failure.method or ''} {failure.stage}: "
              f"{failure.error}", file=sys.stderr)
    return 1 if results.failures else 0
