"""The metrics as the harness runs them: one method's maps on one batch (:class:`Run`), an
adapter per metric that reads it, and the registry of metric names.

An adapter is ``compute(run, **options) -> (B, K)``; its keyword parameters are the options
``evaluate(metric_options=...)`` accepts for it. Results that several metrics or methods share
are cached on the run (this method's) or on its batch (every method's).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..capture.batches import Batching
from ..metrics.faithfulness import (
    auc,
    deletion_curve,
    drop_percent,
    increase_percent,
    insertion_curve,
    masked_confidence,
)
from ..metrics.localization import (
    POINTING_TOLERANCE,
    energy_share,
    grid_pointing_game,
    pointing_game,
)
from ..metrics.robustness import (
    Noise,
    attribution_dots,
    infidelity_from,
    max_sensitivity,
    score_drops,
)
from ..metrics.scoring import Confidence, make_scorer
from ..targets import logits_of
from .regions import nan_where_unknown, regions, target_cells
from .samples import Batch


@dataclass
class Run:
    """One method's maps on one batch, with everything a metric needs; ``batching`` sizes the
    metrics' forward passes (:class:`camkit.capture.batches.Batching`)."""

    method: str
    batch: Batch
    maps: Tensor  # (B, K, H, W)
    model: nn.Module  # the explained model
    scoring_model: nn.Module  # the one model that scores every method
    confidence: Confidence
    batching: Batching
    seed: int
    explainer: Callable[[Tensor, Tensor], Tensor]
    cache: dict[Any, Any] = field(default_factory=dict)

    @property
    def x(self) -> Tensor:
        return self.batch.x

    @property
    def targets(self) -> Tensor:
        return self.batch.classes

    @property
    def chunks(self) -> dict[str, Any]:
        """The batching knobs of the metric functions."""
        return {"batch_size": self.batching.batch_size,
                "max_batch_memory": self.batching.max_batch_memory}

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
                base = make_scorer(self.scoring_model, self.confidence, **self.chunks)(
                    self.x, self.targets)
            self.batch.cache["base"] = base
        return self.batch.cache["base"]

    def masked(self) -> Tensor:
        """``(B, K)`` confidences on the explanation-masked images (this method's)."""
        if "masked" not in self.cache:
            self.cache["masked"] = masked_confidence(
                self.scoring_model, self.x, self.maps, self.targets,
                confidence=self.confidence, **self.chunks)
        return self.cache["masked"]


def _average_drop(run: Run) -> Tensor:
    return drop_percent(run.base(), run.masked())


def _increase(run: Run) -> Tensor:
    return increase_percent(run.base(), run.masked())


def _deletion(run: Run, steps: int = 16, baseline: str | float = "zero") -> Tensor:
    return auc(deletion_curve(run.scoring_model, run.x, run.maps, run.targets, steps=steps,
                              baseline=baseline, confidence=run.confidence, **run.chunks))


def _insertion(run: Run, steps: int = 16, baseline: str | float = "blur") -> Tensor:
    return auc(insertion_curve(run.scoring_model, run.x, run.maps, run.targets, steps=steps,
                               baseline=baseline, confidence=run.confidence, **run.chunks))


def _infidelity_terms(run: Run, sigma: float, n_samples: int) -> tuple[Tensor, Tensor]:
    """Channel-summed noise ``(B, n, H, W)`` and score drops ``(B, n, K)``: the same
    perturbations for every method, so computed once per batch."""
    key = ("infidelity", sigma, n_samples)
    if key not in run.batch.cache:
        draws = Noise("gaussian", sigma, run.seed).sample(run.x, n_samples, run.batch.keys)
        drops = score_drops(run.scoring_model, run.x, draws, run.targets,
                            confidence=run.confidence, base=run.base(), **run.chunks)
        run.batch.cache[key] = (draws.sum(dim=2), drops)
    return run.batch.cache[key]


def _infidelity(normalize: bool) -> Callable[..., Tensor]:
    def compute(run: Run, sigma: float = 0.2, n_samples: int = 10) -> Tensor:
        sums, drops = _infidelity_terms(run, sigma, n_samples)
        return infidelity_from(attribution_dots(sums, run.maps), drops, normalize=normalize)

    return compute


def _sensitivity(run: Run, radius: float = 0.02, n_samples: int = 10,
                 relative: bool = True) -> Tensor:
    return max_sensitivity(run.explainer, run.x, run.maps, run.targets,
                           noise=Noise("uniform", radius, run.seed), n_samples=n_samples,
                           relative=relative, keys=run.batch.keys, **run.chunks)


def _energy_in(run: Run, kind: str, partners: Mapping[int, int] | None = None) -> Tensor:
    region, known = regions(run.batch, kind, partners)
    return nan_where_unknown(energy_share(run.maps, region), known)


def _energy(kind: str) -> Callable[[Run], Tensor]:
    def compute(run: Run) -> Tensor:
        return _energy_in(run, kind)

    return compute


def _pointing(kind: str) -> Callable[..., Tensor]:
    def compute(run: Run, tolerance: int = POINTING_TOLERANCE) -> Tensor:
        region, known = regions(run.batch, kind)
        return nan_where_unknown(pointing_game(run.maps, region, tolerance), known)

    return compute


def _grid_pointing(run: Run) -> Tensor:
    cell, grid = target_cells(run.batch)
    cell = cell.to(run.maps.device)
    return nan_where_unknown(grid_pointing_game(run.maps, cell, grid), cell >= 0)


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

    @property
    def arrow(self) -> str:
        """``↑`` when higher is better, ``↓`` when lower is."""
        return "↑" if self.higher_is_better else "↓"


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
               False, _infidelity(normalize=False)),
    MetricSpec("infidelity-normalized", "infidelity with Φ rescaled by the optimal β",
               False, _infidelity(normalize=True)),
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


def metric_spec(name: str) -> MetricSpec:
    """The registered metric ``name``; an unknown name fails with the closest matches."""
    if name not in METRICS:
        close = difflib.get_close_matches(name, list(METRICS), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown metric {name!r}.{hint} Available: {', '.join(METRICS)}.")
    return METRICS[name]


def check_metric_options(options: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse an option that a metric's adapter does not take."""
    for name, opts in options.items():
        unknown = sorted(set(opts) - set(METRICS[name].options))
        if unknown:
            raise ValueError(f"metric {name!r} has no option(s) {unknown}; it accepts "
                             f"{METRICS[name].options or 'none'}")


def available_metrics() -> dict[str, str]:
    """Metric names with one-line descriptions (↑ higher is better, ↓ lower)."""
    return {m.name: f"{m.arrow} {m.summary}" for m in METRICS.values()}
