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
from ..capture.hooks import borrowed
from ..metrics.complexity import complexity, sparseness
from ..metrics.correlation import (
    SUBSET_RUNS,
    SUBSET_SIZE,
    correlation_from,
    random_subsets,
    subset_attributions,
    subset_drops,
)
from ..metrics.faithfulness import (
    auc,
    deletion_curve,
    drop_percent,
    increase_percent,
    insertion_curve,
    masked_confidence,
    pixel_flipping_curve,
)
from ..metrics.localization import (
    POINTING_TOLERANCE,
    energy_share,
    grid_pointing_game,
    pointing_game,
)
from ..metrics.randomisation import (
    PASS_FRACTION,
    VERDICT_SIMILARITY,
    ModelExplainer,
    parameter_randomisation,
    random_logit,
)
from ..metrics.road import ROAD_NOISE, ROAD_PERCENTAGES, curve_mean, road_combined, road_curve
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
    model_explainer: ModelExplainer | None = None  # the method on any model (randomised copies)
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


def _road_curve(run: Run, order: str, percentages: Sequence[float], noise: float) -> Tensor:
    """``(B, K, P)`` ROAD confidences of this method's maps, computed once per order."""
    key = ("road", order, tuple(percentages), noise)
    if key not in run.cache:
        run.cache[key] = road_curve(
            run.scoring_model, run.x, run.maps, run.targets, order=order,
            percentages=percentages, noise=noise, seed=run.seed, keys=run.batch.keys,
            confidence=run.confidence, **run.chunks)
    return run.cache[key]


def _road(order: str | None) -> Callable[..., Tensor]:
    def compute(run: Run, percentages: Sequence[float] = ROAD_PERCENTAGES,
                noise: float = ROAD_NOISE) -> Tensor:
        if order is not None:
            return curve_mean(_road_curve(run, order, percentages, noise))
        return road_combined(_road_curve(run, "morf", percentages, noise),
                             _road_curve(run, "lerf", percentages, noise))

    return compute


def _pixel_flipping(run: Run, steps: int = 64, baseline: str | float = "black") -> Tensor:
    return auc(pixel_flipping_curve(run.scoring_model, run.x, run.maps, run.targets,
                                    steps=steps, baseline=baseline, confidence=run.confidence,
                                    **run.chunks))


def _faithfulness_correlation(run: Run, n_runs: int = SUBSET_RUNS,
                              subset_size: int = SUBSET_SIZE,
                              baseline: str | float = "black") -> Tensor:
    """The subsets and their score drops are the same for every method: computed once per
    batch."""
    key = ("subsets", n_runs, subset_size, baseline)
    if key not in run.batch.cache:
        subsets = random_subsets(run.x, n_runs, subset_size, run.seed, run.batch.keys)
        drops = subset_drops(run.scoring_model, run.x, subsets, run.targets, baseline=baseline,
                             confidence=run.confidence, base=run.base(), **run.chunks)
        run.batch.cache[key] = (subsets, drops)
    subsets, drops = run.batch.cache[key]
    return correlation_from(subset_attributions(run.maps, subsets), drops)


def _randomisation(run: Run, layers: str | Sequence[str] | None = None,
                   measure: str = VERDICT_SIMILARITY, fraction: float = PASS_FRACTION) -> Tensor:
    if run.model_explainer is None:
        raise ValueError("the randomisation metric needs the run's model_explainer")
    curves = parameter_randomisation(run.model, run.x, run.targets, run.model_explainer,
                                     layers=layers, seed=run.seed, until=fraction,
                                     similarities=(measure,))
    return curves.similarity[measure][..., -1]


def _random_logit(run: Run, measure: str = "ssim") -> Tensor:
    outputs = run.batch.outputs
    if outputs is None:
        with borrowed(run.model), torch.no_grad():
            outputs = run.model(run.x)
    return random_logit(run.explainer, run.x, run.maps, run.targets,
                        n_classes=logits_of(outputs).shape[1], seed=run.seed,
                        keys=run.batch.keys, measure=measure)


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
    MetricSpec("road", "ROAD: mean over 10-90 % of (LeRF − MoRF)/2, noisy linear imputation",
               True, _road(None)),
    MetricSpec("road-morf", "ROAD MoRF: mean confidence as the most salient 10-90 % are "
               "imputed", False, _road("morf")),
    MetricSpec("road-lerf", "ROAD LeRF: mean confidence as the least salient 10-90 % are "
               "imputed", True, _road("lerf")),
    MetricSpec("pixel-flipping", "AUC of the confidence as the most salient pixels are set to "
               "the image's minimum, 64 steps", False, _pixel_flipping),
    MetricSpec("faithfulness-correlation", "Pearson r of Σ_S Φ and the confidence drop when S "
               "is removed, 100 subsets of 224 px", True, _faithfulness_correlation),
    MetricSpec("infidelity", "E[(IᵀΦ − (f(x) − f(x−I)))²], I ~ N(0, 0.2²), 10 draws",
               False, _infidelity(normalize=False)),
    MetricSpec("infidelity-normalized", "infidelity with Φ rescaled by the optimal β",
               False, _infidelity(normalize=True)),
    MetricSpec("sensitivity", "max ‖Φ(y) − Φ(x)‖/‖Φ(x)‖ over 10 y in the L∞ ball of 0.02",
               False, _sensitivity),
    MetricSpec("sparseness", "Gini index of |map|: 0 for a flat map, (n−1)/n for one pixel",
               True, lambda run: sparseness(run.maps)),
    MetricSpec("complexity", "entropy of |map| as a distribution: log n for a flat map",
               False, lambda run: complexity(run.maps)),
    MetricSpec("randomisation", "Spearman ρ of |map| with the top half of the blocks "
               "re-initialised (cascading)", False, _randomisation),
    MetricSpec("random-logit", "SSIM of the maps of the target and of a random other class",
               False, _random_logit),
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
FAITHFULNESS_EXTRA = ("road", "road-morf", "road-lerf", "pixel-flipping",
                      "faithfulness-correlation")
COMPLEXITY = ("sparseness", "complexity")
RANDOMISATION = ("randomisation", "random-logit")
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
