"""The evaluation loop: every method on every batch of samples, every metric on its maps.

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

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import api
from ..capture.batches import DEFAULT_MAX_BATCH_MEMORY, Batching, BatchSize
from ..capture.layers import module_name
from ..methods import registry
from ..metrics.randomisation import ModelExplainer, model_explainer
from ..metrics.robustness import method_explainer
from ..metrics.scoring import METRIC_BATCH_SIZE, Confidence, confidence_function, metric_batching
from ..progress import Progress
from .metrics import DEFAULT_METRICS, METRICS, Run, check_metric_options, metric_spec
from .results import EvaluationResults
from .samples import Batch, Failure, Sample, as_sample, read_items, stack_samples


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a model without any)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


class _Evaluation:
    """The state of one :func:`evaluate` call."""

    def __init__(self, model: nn.Module, methods: list[str], metrics: list[str],
                 layer: Any, *, targets: str, task: str | None,
                 confidence: str | Confidence | None, scoring_model: nn.Module | None,
                 method_options: Mapping[str, Mapping[str, Any]],
                 metric_options: Mapping[str, Mapping[str, Any]], batching: Batching,
                 seed: int) -> None:
        self.model, self.methods, self.metrics, self.layer = model, methods, metrics, layer
        self.target_mode, self.task, self.confidence_spec = targets, task, confidence
        self.scoring_model = model if scoring_model is None else scoring_model
        self.method_options, self.metric_options = method_options, metric_options
        self.batching, self.seed = batching, seed
        self.device = model_device(model)
        self.confidence: Confidence | None = None
        self.failures: list[Failure] = []
        self.pairs: dict[str, list[tuple[str, int]]] = {m: [] for m in methods}
        self.explainers: dict[str, Callable[[Tensor, Tensor], Tensor]] = {}
        self.values: dict[str, dict[str, list[Tensor]]] = {
            m: {k: [] for k in metrics} for m in methods}
        self.explain_seconds = dict.fromkeys(methods, 0.0)
        self.metric_seconds = {m: dict.fromkeys(metrics, 0.0) for m in methods}
        self.images = dict.fromkeys(methods, 0)
        self.constant = dict.fromkeys(methods, 0)
        self.without_targets = 0
        self.bar: Progress | None = None  # the run's one bar, in explained (image, method)s

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
        self.advance(len(samples) - len(kept), len(self.methods))
        return kept

    def advance(self, images: int, methods: int = 1) -> None:
        """Count ``images`` × ``methods`` explanations done (or given up) on the run's bar."""
        if self.bar is not None:
            self.bar.update(images * methods)

    def options(self, method: str) -> dict[str, Any]:
        """``method``'s options; a method with its own progress bar keeps it off unless asked
        (the run's bar counts its images)."""
        quiet = {"progress": False} if "progress" in registry.get_method(method).options else {}
        return quiet | dict(self.method_options.get(method, {}))

    def stack(self, samples: list[Sample]) -> Batch:
        return stack_samples(samples, self.device, self.target_mode == "label")

    # -- explanations ----------------------------------------------------------------------

    def _explain(self, batch: Batch, method: str) -> tuple[Batch, Tensor] | None:
        """The maps ``(B', K, H, W)`` of the samples that could be explained, and those
        samples as a batch with their targets (predicted ones filled in)."""
        options = self.options(method)
        try:
            start = _clock(self.device)
            expl = api.explain(self.model, batch.x, batch.targets, (method,), self.layer,
                               seed=self.seed, **options)
            self.explain_seconds[method] += _clock(self.device) - start
        except Exception as err:
            if len(batch.samples) == 1:
                self.failures.append(Failure.of(batch.samples[0].name, method, "explain", err))
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
                self.failures.append(Failure.of(run.batch.samples[0].name, run.method, name, err))
                return torch.full(run.targets.shape, math.nan, device=run.maps.device)
            return torch.cat([self._metric(run.select([i]), name)
                              for i in range(len(run.batch.samples))])

    def evaluate_batch(self, batch: Batch) -> None:
        assert self.confidence is not None, "explainable() settles the task first"
        for method in self.methods:
            explained = self._explain(batch, method)
            if explained is not None:
                done, maps = explained
                self._score(Run(method, done, maps, self.model, self.scoring_model,
                                self.confidence, self.batching, self.seed,
                                self._explainer(method), self._model_explainer(method)))
            self.advance(len(batch.samples))

    def _explainer(self, method: str) -> Callable[[Tensor, Tensor], Tensor]:
        """One explainer per method for the whole run: the chunk size max-Sensitivity finds
        for it on the first batch is kept for the next ones."""
        if method not in self.explainers:
            self.explainers[method] = method_explainer(self.model, method, self.layer,
                                                       seed=self.seed, **self.options(method))
        return self.explainers[method]

    def _model_explainer(self, method: str) -> ModelExplainer:
        return model_explainer(method, layer_names(self.model, self.layer), seed=self.seed,
                               **self.options(method))

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

    def results(self, settings: dict[str, Any], wall: float) -> EvaluationResults:
        values = {m: {k: (torch.cat(v).numpy().astype(np.float64) if v else np.zeros(0))
                      for k, v in per.items()} for m, per in self.values.items()}
        spent = sum(self.explain_seconds.values()) + sum(
            sum(per.values()) for per in self.metric_seconds.values())
        settings = {**settings, "task": self.task, "targets": self.target_mode}
        if self.without_targets:
            settings["skipped (no positive class)"] = self.without_targets
        return EvaluationResults(self.methods, self.metrics, self.pairs, values,
                                 self.explain_seconds, self.metric_seconds, self.images,
                                 self.constant, self.failures, settings, wall, wall - spent)


def layer_names(model: nn.Module, layer: Any) -> Any:
    """``layer`` with its modules replaced by their dotted names in ``model`` (a list stays a
    list), so that it names the same layers in a copy of the model."""
    if isinstance(layer, nn.Module):
        return module_name(model, layer)
    if isinstance(layer, (list, tuple)):
        return [layer_names(model, part) for part in layer]
    return layer


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
    metric_batch_size: BatchSize = METRIC_BATCH_SIZE,
    max_batch_memory: float = DEFAULT_MAX_BATCH_MEMORY,
    seed: int = 0,
    limit: int | None = None,
    progress: bool | None = None,
    out: str | Path | None = None,
) -> EvaluationResults:
    """Run every method on every sample of ``data`` and score the maps with every metric.

    Args:
        model: the network to explain (borrowed; in eval mode for every call).
        data: a map-style data set or an iterable of items (:mod:`camkit.evaluate.samples`).
        methods: method names (``camkit.available_methods()``).
        metrics: metric names (:func:`~camkit.evaluate.metrics.available_metrics`).
        layer: the target layer for ``camkit.explain``.
        targets: ``"auto"``, ``"label"`` or ``"predicted"`` (:mod:`camkit.evaluate.harness`).
        task: ``"single-label"`` or ``"multi-label"``; ``None`` reads it from the labels.
        confidence: ``"softmax"``, ``"sigmoid"``, ``"logit"`` or a function of the logits;
            ``None`` picks the task's.
        scoring_model: the one model that scores every method (default ``model``);
            ``torch.compile(model)`` compiles the metrics' passes (fix ``metric_batch_size``).
        method_options: per method, keyword options for ``camkit.explain``
            (``{"mcam": {"memory": memory}}``).
        metric_options: per metric, keyword options (``{"deletion": {"steps": 32}}``,
            ``{"infidelity": {"sigma": 0.1, "n_samples": 20}}``,
            ``{"pointing-mask": {"tolerance": 0}}``, ``{"energy-leak": {"partners": {0: 1}}}``,
            ``{"road": {"percentages": [20, 50, 80], "noise": 0.01}}``,
            ``{"randomisation": {"layers": "leaves"}}``).
        batch_size: images per ``camkit.explain`` call.
        metric_batch_size: images per forward pass inside the metrics (``None``: as many as
            fit in ``max_batch_memory`` bytes, as for the perturbation methods).
        max_batch_memory: the metrics' memory budget when ``metric_batch_size`` is ``None``.
        seed: seeds the methods (``explain(seed=...)``) and the metrics' noise.
        limit: evaluate only the first ``limit`` items.
        progress: progress bar on stderr (``None``: when the run takes more than a few s).
        out: if given, write ``results.md``, ``results.csv`` and ``results.json`` there.

    Example: two methods scored by Average Drop and the mask's energy on 4 labelled images.

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
    ...                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    >>> data = [{"image": torch.rand(3, 32, 32), "label": i % 4,
    ...          "mask": torch.rand(32, 32) > 0.5} for i in range(4)]
    >>> results = camkit.evaluate(model, data, ["gradcam", "hirescam"],
    ...                           ["average-drop", "energy-mask"], layer="1", progress=False)
    >>> results.methods, results.metrics
    (['gradcam', 'hirescam'], ['average-drop', 'energy-mask'])
    >>> 0 <= results.summary("gradcam", "energy-mask").mean <= 1
    True
    """
    method_names = _names(methods)
    metric_names = _names(metrics)
    for method in method_names:
        registry.get_method(method)
    for name in metric_names:
        metric_spec(name)
    metric_opts = _check_options(metric_options, metric_names, "metric")
    check_metric_options(metric_opts)
    if targets not in ("auto", "label", "predicted"):
        raise ValueError(f"targets must be 'auto', 'label' or 'predicted', got {targets!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    state = _Evaluation(model, method_names, metric_names, layer, targets=targets, task=task,
                        confidence=confidence, scoring_model=scoring_model,
                        method_options=_check_options(method_options, method_names, "method"),
                        metric_options=metric_opts,
                        batching=metric_batching(metric_batch_size, max_batch_memory), seed=seed)
    start = _clock(state.device)
    seen = _run_items(state, data, limit, batch_size, progress)
    settings = {"methods": method_names, "metrics": metric_names, "samples": seen,
                "layer": layer if isinstance(layer, (str, type(None))) else type(layer).__name__,
                "batch_size": batch_size, "seed": seed, "device": str(state.device),
                "metric_options": {k: {o: str(v) for o, v in opts.items()}
                                   for k, opts in metric_opts.items()}}
    results = state.results(settings, _clock(state.device) - start)
    if out is not None:
        results.save(out)
    return results


def _names(names: str | Sequence[str]) -> list[str]:
    return [names] if isinstance(names, str) else list(dict.fromkeys(names))


def _run_items(state: _Evaluation, data: Any, limit: int | None, batch_size: int,
               progress: bool | None) -> int:
    """Read, validate and evaluate the items of ``data`` ``batch_size`` at a time; returns how
    many items were read."""
    items, total = read_items(data, limit)
    seen = 0
    with Progress(total * len(state.methods), "evaluate", progress, unit="map") as bar:
        state.bar = bar
        pending: list[Sample] = []
        for index, item in items:
            seen += 1
            try:
                if isinstance(item, Exception):
                    raise item
                pending.append(as_sample(item, index))
            except Exception as err:
                state.failures.append(Failure.of(str(index), None, "load", err))
                state.advance(1, len(state.methods))
            if len(pending) == batch_size:
                _run_batch(state, pending)
                pending = []
        if pending:
            _run_batch(state, pending)
    return seen


def _run_batch(state: _Evaluation, samples: list[Sample]) -> None:
    samples = state.explainable(samples)
    if not samples:
        return
    try:
        batch = state.stack(samples)
    except Exception as err:  # e.g. images of different sizes: go one by one
        if len(samples) == 1:
            state.failures.append(Failure.of(samples[0].name, None, "load", err))
            state.advance(1, len(state.methods))
            return
        for sample in samples:
            _run_batch(state, [sample])
        return
    state.evaluate_batch(batch)
