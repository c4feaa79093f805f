"""From camkit's results to report items and files: an :class:`~camkit.Explanation`
(:func:`report_items`, :func:`explanation_to_html`, :func:`save_explanation`), the results of
``camkit explain`` (:func:`report_from_results`) and of :func:`camkit.evaluate`
(:func:`evaluation_metrics`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from camkit.explanation import Explanation
from camkit.targets import logits_of
from camkit.viz.overlay import ImageLike
from camkit.viz.report.figures import save_grid, save_grids
from camkit.viz.report.model import HasReport, Metrics, MetricValue, ReportItem, TargetRow
from camkit.viz.report.render import write_report


def report_item(
    expl: Explanation,
    index: int,
    image: ImageLike,
    class_names: Sequence[str] | None = None,
    *,
    name: str | None = None,
    predictions: Sequence[tuple[str, float]] | None = None,
    top: int = 5,
) -> ReportItem:
    """The :class:`ReportItem` of image ``index`` of ``expl``, drawn on ``image`` (the RGB
    picture the network saw, e.g. ``loaded.preprocess.view(img)``).

    ``predictions=None`` takes the ``top`` classes of the softmax of the model's class
    scores (none when the output holds no ``(B, n_classes)`` scores).
    """
    probabilities = _probabilities(expl.outputs)
    row = None if probabilities is None else probabilities[index]
    if predictions is None:
        predictions = [] if row is None else _top(row, class_names, top)
    return ReportItem(
        name=name or f"image {index + 1}",
        image=image,
        targets=_targets(expl, index, class_names, row),
        maps={m: expl[m][index] for m in expl},
        raw={m: expl.raw[m][index] for m in expl},
        predictions=predictions,
    )


def report_items(
    expl: Explanation,
    images: Sequence[ImageLike],
    class_names: Sequence[str] | None = None,
    *,
    names: Sequence[str] | None = None,
    top: int = 5,
) -> list[ReportItem]:
    """One :class:`ReportItem` per image of ``expl``; ``images[b]`` is image ``b``'s RGB
    picture and ``names[b]`` its title (default ``image 1``, ``image 2``, ...)."""
    batch = next(iter(expl.maps.values())).shape[0] if len(expl) else 0
    if not batch:
        raise ValueError("the explanation has no maps to report")
    for what, given in (("images", images), ("names", names)):
        if given is not None and len(given) != batch:
            raise ValueError(f"{len(given)} {what} for an explanation of {batch} images")
    return [report_item(expl, b, images[b], class_names, name=names[b] if names else None,
                        top=top) for b in range(batch)]


def _probabilities(outputs: Any) -> np.ndarray | None:
    try:
        logits = logits_of(outputs)
    except (TypeError, ValueError):
        return None
    return logits.detach().float().softmax(dim=1).cpu().numpy()


def _class_name(index: int, class_names: Sequence[str] | None) -> str:
    if class_names is None:
        return f"class {index}"
    if not 0 <= index < len(class_names):
        raise ValueError(f"class {index} is out of range for {len(class_names)} class names")
    return class_names[index]


def _top(row: np.ndarray, class_names: Sequence[str] | None, k: int) -> list[tuple[str, float]]:
    best = np.argsort(-row, kind="stable")[:k]
    return [(_class_name(int(i), class_names), float(row[i])) for i in best]


def _targets(expl: Explanation, b: int, class_names: Sequence[str] | None,
             probabilities: np.ndarray | None) -> list[TargetRow]:
    scores = expl.scores[b].detach().float().cpu().tolist()
    if expl.targets is None:
        return [TargetRow(f"target {k + 1}", s) for k, s in enumerate(scores)]
    indices = expl.targets[b].tolist()
    return [TargetRow(_class_name(i, class_names), s,
                      None if probabilities is None else float(probabilities[i]))
            for i, s in zip(indices, scores, strict=True)]


def _explanation_settings(expl: Explanation, settings: Mapping[str, Any] | None
                          ) -> dict[str, Any]:
    found: dict[str, Any] = {"layer": expl.layer, "methods": list(expl)}
    if expl.details:
        found["method notes"] = expl.details
    return {**(settings or {}), **found}


def explanation_to_html(
    expl: Explanation,
    images: Sequence[ImageLike],
    class_names: Sequence[str] | None,
    path: str | os.PathLike[str],
    *,
    names: Sequence[str] | None = None,
    settings: Mapping[str, Any] | None = None,
    metrics: Metrics | None = None,
    alpha: float = 0.5,
    title: str = "camkit report",
) -> Path:
    """Write the HTML report of ``expl`` to ``path`` (see :func:`report_items` for
    ``images`` and ``names``); ``settings`` (the model's name, options, ...) are shown with
    the layer, the methods and the package versions. Returns the path."""
    items = report_items(expl, images, class_names, names=names)
    return write_report(path, items, _explanation_settings(expl, settings), metrics,
                        title=title, alpha=alpha)


class SavedExplanation(NamedTuple):
    """The files :func:`save_explanation` wrote."""

    report: Path
    grid: Path
    grids: list[Path]
    maps: Path


def save_explanation(
    expl: Explanation,
    directory: str | os.PathLike[str],
    images: Sequence[ImageLike],
    class_names: Sequence[str] | None = None,
    *,
    names: Sequence[str] | None = None,
    settings: Mapping[str, Any] | None = None,
    metrics: Metrics | None = None,
    alpha: float = 0.5,
) -> SavedExplanation:
    """Write into ``directory``: ``report.html``; ``grid.png``, one figure with a row per
    image and target (the input, then each method's overlay); ``grids/<name>.png``, the
    same per image (for slides); ``maps.npz`` with ``maps/<method>`` ``(B, K, H, W)``,
    ``raw/<method>`` ``(B, K, h, w)``, ``constant/<method>`` ``(B, K)``, ``scores``
    ``(B, K)`` and, for class targets, ``targets`` ``(B, K)``."""
    out = Path(directory)
    items = report_items(expl, images, class_names, names=names)
    report = write_report(out / "report.html", items,
                          _explanation_settings(expl, settings), metrics, alpha=alpha)
    return SavedExplanation(report, save_grid(items, out / "grid.png", alpha),
                            save_grids(items, out / "grids", alpha),
                            _save_maps(expl, out / "maps.npz"))


def _save_maps(expl: Explanation, path: Path) -> Path:
    arrays: dict[str, Any] = {"scores": expl.scores.detach().cpu().numpy()}
    if expl.targets is not None:
        arrays["targets"] = expl.targets.cpu().numpy()
    for m in expl:
        arrays[f"maps/{m}"] = expl.numpy(m)
        arrays[f"raw/{m}"] = expl.raw[m].detach().float().cpu().numpy()
        arrays[f"constant/{m}"] = expl.constant[m].cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def report_from_results(
    results: Sequence[HasReport],
    path: str | os.PathLike[str],
    *,
    model: str,
    layer: str,
    methods: Sequence[str],
    options: Mapping[str, Any] | None = None,
    command: str | None = None,
    metrics: Metrics | None = None,
    alpha: float = 0.5,
) -> Path:
    """The report of ``camkit explain``'s results (each carries its :class:`ReportItem`),
    with the model, layer, methods, options and command line that made them."""
    settings = {"model": model, "layer": layer, "methods": list(methods),
                "options": dict(options or {}), "command": command}
    settings = {k: v for k, v in settings.items() if v}
    return write_report(path, [r.report for r in results], settings, metrics, alpha=alpha)


def evaluation_metrics(results: Any) -> dict[str, dict[str, MetricValue]]:
    """The report's metrics table from a :func:`camkit.evaluate` result (anything with its
    ``table()`` rows): per method, each metric's mean and 95% interval, the column marked ↑
    (higher is better) or ↓, then the explanation time per image in milliseconds."""
    metrics: dict[str, dict[str, MetricValue]] = {}
    times: dict[str, float] = {}
    for row in results.table():
        arrow = "↑" if row["higher_is_better"] else "↓"
        metrics.setdefault(row["method"], {})[f"{row['metric']} {arrow}"] = (
            row["mean"], row["ci95_low"], row["ci95_high"])
        times[row["method"]] = row["explain_ms_per_image"]
    for method, ms in times.items():
        metrics[method]["explain ms / image"] = ms
    return metrics
