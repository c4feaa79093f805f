"""The self-contained HTML report, and an explanation saved for papers and slides.

One HTML file and nothing fetched: every picture is a base64 PNG ``data:`` URI and the styles
and the few lines of script are inline, so the file opens from disk, travels as an attachment
and prints. Per image it shows the input, the predicted classes, one row per target class
with one panel per method, and a button that switches every panel between the overlay and
the raw map; then the metrics table (when given) and the settings and package versions that
reproduce the result. Images may be grouped into titled parts (:class:`ReportSection`, each
with a short text and its own metrics table), and an image may carry a small gallery of
related pictures (its nearest neighbours in an embedding, say).

Overlays are blended by the browser, with the same formula as :func:`camkit.viz.overlay`
(``(1 - alpha) * image + alpha * colour``, adjustable on the page): each panel stacks its
viridis map, a palette PNG about a third the size of an RGB overlay, over the input image,
which is embedded once per image as a CSS background. The PNG figures written by
:func:`save_explanation` are blended by :func:`camkit.viz.overlay` itself.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
from PIL import Image

from camkit.targets import logits_of
from camkit.viz.overlay import (
    ImageLike,
    as_rgb_array,
    colorize,
    grid,
    overlay,
    resize_map,
    save_png,
)

if TYPE_CHECKING:
    from camkit.api import Explanation

MetricValue = float | tuple[float, float, float]
"""A metric's mean, or ``(mean, low, high)``: the mean and its 95% confidence interval."""
Metrics = Mapping[str, Mapping[str, MetricValue]]
"""``metrics[method][metric]``; time per image is one more metric column."""

_PALETTE = colorize(np.linspace(0.0, 1.0, 256)[None])[0]  # (256, 3) uint8, viridis
_VERSIONED = ("camkit", "torch", "torchvision", "numpy", "pillow")


@dataclass(frozen=True)
class Target:
    """One explained output: its label, its score and, for a class, its probability."""

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
    targets: Sequence[Target]
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
    """A titled part of the report: a short text, its own metrics table and its images."""

    title: str
    items: Sequence[ReportItem]
    text: str = ""
    metrics: Metrics | None = None

    def __post_init__(self) -> None:
        self.items = list(self.items)


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


class HasReport(Protocol):
    """What :func:`report_from_results` needs of a result: its :class:`ReportItem`."""

    report: ReportItem


# -- from an Explanation ---------------------------------------------------------------------------


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
             probabilities: np.ndarray | None) -> list[Target]:
    scores = expl.scores[b].detach().float().cpu().tolist()
    if expl.targets is None:
        return [Target(f"target {k + 1}", s) for k, s in enumerate(scores)]
    indices = expl.targets[b].tolist()
    return [Target(_class_name(i, class_names), s,
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
    rows = [grid_rows(item, alpha) for item in items]
    figure = save_png(grid([r for item_rows in rows for r in item_rows]), out / "grid.png")
    stems = _unique_stems([item.name for item in items])
    grids = [save_png(grid(r), out / "grids" / f"{s}.png") for r, s in zip(rows, stems,
                                                                          strict=True)]
    return SavedExplanation(report, figure, grids, _save_maps(expl, out / "maps.npz"))


def grid_rows(item: ReportItem, alpha: float = 0.5) -> list[list[tuple[np.ndarray, str]]]:
    """The rows of ``item``'s PNG figure (for :func:`camkit.viz.grid`): per target, the input
    and each method's overlay; then, when it has any, the item's gallery pictures."""
    rows = [[(item.image, f"{item.name}: {target.label}"),
             *((overlay(item.image, maps[k], alpha), m) for m, maps in item.maps.items())]
            for k, target in enumerate(item.targets)]
    return rows + ([list(item.gallery)] if item.gallery else [])


def save_grid(items: Sequence[ReportItem], path: str | os.PathLike[str], alpha: float = 0.5
              ) -> Path:
    """One PNG figure of ``items`` (the :func:`grid_rows` of each, top to bottom)."""
    return save_png(grid([row for item in items for row in grid_rows(item, alpha)]), path)


def _unique_stems(names: Sequence[str]) -> list[str]:
    stems: list[str] = []
    for name in names:
        base = re.sub(r"[^\w.-]+", "_", Path(name).stem).strip("._") or "image"
        stem, n = base, 1
        while stem in stems:
            n += 1
            stem = f"{base}-{n}"
        stems.append(stem)
    return stems


def _save_maps(expl: Explanation, path: Path) -> Path:
    arrays = {"scores": expl.scores.detach().cpu().numpy()}
    if expl.targets is not None:
        arrays["targets"] = expl.targets.cpu().numpy()
    for m in expl:
        arrays[f"maps/{m}"] = expl.numpy(m)
        arrays[f"raw/{m}"] = expl.raw[m].detach().float().cpu().numpy()
        arrays[f"constant/{m}"] = expl.constant[m].cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


# -- from the CLI ----------------------------------------------------------------------------------


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


# -- from camkit.evaluate --------------------------------------------------------------------------


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


# -- the page --------------------------------------------------------------------------------------


def write_report(
    path: str | os.PathLike[str],
    items: Sequence[ReportItem | ReportSection],
    settings: Mapping[str, Any] | None = None,
    metrics: Metrics | None = None,
    *,
    title: str = "camkit report",
    alpha: float = 0.5,
) -> Path:
    """Write the report (see :func:`render_report`) to ``path``, creating parent folders."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(items, settings, metrics, title=title, alpha=alpha),
                   encoding="utf-8")
    return out


def render_report(
    items: Sequence[ReportItem | ReportSection],
    settings: Mapping[str, Any] | None = None,
    metrics: Metrics | None = None,
    *,
    title: str = "camkit report",
    alpha: float = 0.5,
) -> str:
    """The report as one HTML document.

    ``items`` may be empty (a metrics-only report) and may mix images with
    :class:`ReportSection` parts, shown in the given order; ``settings`` are shown as given,
    followed by the Python, platform and package versions; ``alpha`` is the initial overlay
    opacity.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    parts = _as_sections(items)
    flat = [item for part in parts for item in part.items]
    inputs = [_png_uri(Image.fromarray(item.image)) for item in flat]
    backgrounds = "".join(f'.bg-{i}{{background-image:url("{uri}")}}\n'
                          for i, uri in enumerate(inputs, 1))
    body = "".join([
        _header(title, flat, alpha),
        "<main>",
        _nav(parts),
        f'<p class="reading intro">{_READING}</p>\n' if flat else "",
        _metrics_section(metrics) if metrics else "",
        *_parts_html(parts, inputs),
        _settings_section(settings or {}),
        "</main>",
    ])
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<title>{_esc(title)}</title>\n<link rel="icon" href="data:,">\n'
        f"<style>\n{_CSS}{backgrounds}</style>\n</head>\n<body>\n{body}\n"
        f"<script>\n{_SCRIPT}</script>\n</body>\n</html>\n"
    )


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _png_uri(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _map_uri(map_hw: np.ndarray) -> str:
    """A map in [0, 1] as a viridis palette PNG (256 levels)."""
    levels = np.rint(np.clip(map_hw, 0.0, 1.0) * 255).astype(np.uint8)
    picture = Image.fromarray(levels)
    picture.putpalette(_PALETTE.tobytes())
    return _png_uri(picture)


def _raw_view(raw_hw: np.ndarray) -> tuple[str, str]:
    """The raw map scaled from its own min to its max, and the caption giving that range."""
    low, high = float(raw_hw.min()), float(raw_hw.max())
    if high <= low:
        return _map_uri(np.zeros_like(raw_hw)), f"raw: constant {_num(low)}"
    return _map_uri((raw_hw - low) / (high - low)), f"raw: {_num(low)} to {_num(high)}"


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.3g}"


def _header(title: str, items: list[ReportItem], alpha: float) -> str:
    methods = list(dict.fromkeys(m for item in items for m in item.maps))
    targets = sorted({len(item.targets) for item in items})
    facts = [_count(len(items), "image"), _count(len(methods), "method")]
    if targets:
        span = f"{targets[0]}" if len(targets) == 1 else f"{targets[0]}–{targets[-1]}"
        facts.append(f"{span} target{'s' if targets[-1] > 1 else ''} per image")
    controls = _controls(alpha) if items else ""
    return (f'<header class="top"><div class="title"><h1>{_esc(title)}</h1>'
            f'<p class="summary">{" · ".join(facts)}</p></div>{controls}</header>\n')


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _controls(alpha: float) -> str:
    return (
        '<div class="controls">'
        '<button type="button" id="view-toggle" aria-pressed="false">Show raw maps</button>'
        '<label>Opacity <input type="range" data-var="--alpha" min="0" max="1" step="0.05" '
        f'value="{alpha}"></label>'
        '<label>Size <input type="range" data-var="--panel" data-unit="px" min="96" max="320" '
        'step="8" value="176"></label>'
        f'<div class="legend"><span>low</span><img class="colorbar" alt="colour scale: low to '
        f'high" src="{_map_uri(np.linspace(0.0, 1.0, 256)[None])}"><span>high</span></div>'
        "</div>"
    )


def _as_sections(entries: Sequence[ReportItem | ReportSection]) -> list[ReportSection]:
    """The parts of the page: each run of images outside a section becomes an untitled one."""
    parts: list[ReportSection] = []
    for is_section, run in groupby(entries, key=lambda e: isinstance(e, ReportSection)):
        group = list(run)
        parts.extend(group if is_section else [ReportSection("", group)])
    return parts


def _nav(parts: list[ReportSection]) -> str:
    titled = any(part.title for part in parts)
    if sum(len(part.items) for part in parts) < 2 and not titled:
        return ""
    links, i = [], 0
    for j, part in enumerate(parts, 1):
        if part.title:
            links.append(f'<a class="part-link" href="#part-{j}">{_esc(part.title)}</a>')
        for item in part.items:
            i += 1
            links.append(f'<a href="#item-{i}" title="{_esc(item.name)}">{i}. '
                         f"{_esc(item.name)}</a>")
    return f'<nav class="toc" aria-label="contents">{"".join(links)}</nav>\n'


def _parts_html(parts: list[ReportSection], inputs: list[str]) -> list[str]:
    """Each part's heading, text and metrics (when titled), then its images, numbered
    across the whole page."""
    html_parts, i = [], 0
    for j, part in enumerate(parts, 1):
        items = "".join(_item_section(i + n, item, inputs[i + n - 1])
                        for n, item in enumerate(part.items, 1))
        i += len(part.items)
        if not (part.title or part.text or part.metrics):
            html_parts.append(items)
            continue
        text = f'<p class="part-text">{_esc(part.text)}</p>' if part.text else ""
        metrics = _metrics_section(part.metrics, f"metrics-{j}") if part.metrics else ""
        html_parts.append(f'<section class="part" id="part-{j}"><h2 class="part-title">'
                          f"{_esc(part.title)}</h2>{text}\n{metrics}{items}</section>\n")
    return html_parts


_READING = (
    "Each map is normalised to its own minimum and maximum: colours compare places within one "
    "map, not strength across maps. <b>Raw maps</b> show the map before ReLU, upsampling and "
    "normalisation, at the layer's resolution, scaled from its own minimum to its maximum "
    "(the range is under each panel). A <span class=\"flag\">constant</span> map had no "
    "variation and is shown as zeros."
)


def _item_section(i: int, item: ReportItem, image_uri: str) -> str:
    height, width = item.image.shape[:2]
    rows = "".join(_target_row(i, item, k) for k in range(len(item.targets)))
    return (
        f'<section class="item card{" pixelated" if max(width, height) < 128 else ""}" '
        f'id="item-{i}" style="--ar:{width}/{height}">'
        f'<h2><span class="index">{i}</span>{_esc(item.name)}</h2><div class="item-body">'
        f'<div class="side"><figure class="input"><img src="{image_uri}" '
        f'alt="input image {_esc(item.name)}"><figcaption>input, {width} × {height}'
        f"</figcaption></figure>{_predictions(item.predictions)}{_gallery(item)}</div>"
        f'<div class="targets">{rows}</div></div></section>\n'
    )


def _predictions(predictions: Sequence[tuple[str, float]]) -> str:
    if not predictions:
        return ""
    rows = "".join(
        f'<li><span class="cls" title="{_esc(name)}">{_esc(name)}</span>'
        f'<span class="bar"><i style="width:{100 * p:.1f}%"></i></span>'
        f'<span class="pct">{100 * p:.1f}%</span></li>'
        for name, p in predictions
    )
    return f'<div class="preds"><h3>Predicted</h3><ol>{rows}</ol></div>'


def _gallery(item: ReportItem) -> str:
    if not item.gallery:
        return ""
    figures = "".join(
        f'<figure><img src="{_png_uri(Image.fromarray(picture))}" alt="{_esc(caption)}">'
        f'<figcaption title="{_esc(caption)}">{_esc(caption)}</figcaption></figure>'
        for picture, caption in item.gallery
    )
    return (f'<div class="gallery"><h3>{_esc(item.gallery_title)}</h3>'
            f'<div class="thumbs">{figures}</div></div>')


def _target_row(i: int, item: ReportItem, k: int) -> str:
    target = item.targets[k]
    facts = [f"score {_num(target.score)}" if target.score is not None else "",
             f"p {100 * target.probability:.1f}%" if target.probability is not None else ""]
    detail = " · ".join(f for f in facts if f)
    panels = "".join(_panel(i, item, method, k) for method in item.maps)
    return (f'<div class="target-row"><h3><span class="muted">target</span> '
            f'<span class="label">{_esc(target.label)}</span> '
            f'<span class="muted">{detail}</span></h3><div class="panels">{panels}</div></div>')


def _panel(i: int, item: ReportItem, method: str, k: int) -> str:
    label = item.targets[k].label
    heat = item.maps[method][k]
    heat_uri = _map_uri(heat)
    raw = item.raw.get(method)
    raw_uri, caption = (_raw_view(raw[k]) if raw is not None
                        else (heat_uri, "no raw map: normalised map"))
    flag = ('<span class="flag" title="the map was constant and is shown as zeros">constant'
            "</span>" if heat.max() <= heat.min() else "")
    return (
        f'<figure class="panel" data-image="{i}" data-method="{_esc(method)}" '
        f'data-target="{_esc(label)}"><div class="stack bg-{i}">'
        f'<img class="heat" src="{heat_uri}" alt="{_esc(method)} map for {_esc(label)}">'
        f'<img class="raw" src="{raw_uri}" alt="raw {_esc(method)} map for {_esc(label)}">'
        f'</div><figcaption><span class="method" title="{_esc(method)}">{_esc(method)}</span>'
        f'{flag}<span class="range">{_esc(caption)}</span></figcaption></figure>'
    )


def _metrics_section(metrics: Metrics, anchor: str = "metrics") -> str:
    columns = list(dict.fromkeys(name for row in metrics.values() for name in row))
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join(
        f'<tr><th scope="row">{_esc(method)}</th>'
        + "".join(_metric_cell(row.get(c)) for c in columns) + "</tr>"
        for method, row in metrics.items()
    )
    return (
        f'<section class="card" id="{anchor}"><h2>Metrics</h2><div class="table-wrap">'
        f'<table class="metrics"><thead><tr><th>method</th>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
        '<p class="reading">Mean over the images, with its 95% confidence interval in '
        "brackets where it was computed.</p></section>\n"
    )


def _metric_cell(value: MetricValue | None) -> str:
    """A table cell; NaN (undefined) shows as a dash, like a missing value."""
    mean, low, high = value if isinstance(value, tuple) else (value, math.nan, math.nan)
    if mean is None or not math.isfinite(mean):
        return '<td class="num missing">–</td>'
    interval = (f' <span class="ci">[{_num(low)}, {_num(high)}]</span>'
                if math.isfinite(low) and math.isfinite(high) else "")
    return f'<td class="num">{_num(float(mean))}{interval}</td>'


def _settings_section(settings: Mapping[str, Any]) -> str:
    rows = "".join(
        f'<tr><th scope="row">{_esc(key)}</th><td>{_esc(_setting_text(value))}</td></tr>'
        for key, value in {**settings, **environment()}.items()
    )
    return (f'<section class="card" id="settings"><h2>Settings</h2>'
            f'<table class="settings"><tbody>{rows}</tbody></table></section>\n')


def _setting_text(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_setting_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(map(_setting_text, value))
    return str(value)


def environment() -> dict[str, str]:
    """The versions that reproduce a result: Python, platform, camkit and its main
    dependencies, and when the report was made (UTC)."""
    versions = {}
    for package in _VERSIONED:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        **versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "made": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


_CSS = """\
:root{--panel:176px;--alpha:0.5;--ink:#1c2330;--muted:#5d6676;--line:#dfe3ea;--page:#f3f5f8;
--card:#fff;--accent:#33508f;color:var(--ink);background:var(--page);
font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
*{box-sizing:border-box}
body{margin:0}
h1{font-size:20px;margin:0}
h2{font-size:17px;margin:0 0 12px;overflow-wrap:anywhere}
h3{font-size:14px;font-weight:600;margin:0 0 6px;overflow-wrap:anywhere}
.muted,.summary,.reading,figcaption,.legend{color:var(--muted)}
header.top{position:sticky;top:0;z-index:2;display:flex;flex-wrap:wrap;gap:8px 32px;
align-items:center;justify-content:space-between;padding:10px 24px;background:var(--card);
border-bottom:1px solid var(--line);box-shadow:0 1px 4px rgba(0,0,0,.05)}
.summary{margin:2px 0 0;font-size:13px}
.controls{display:flex;flex-wrap:wrap;gap:8px 20px;align-items:center;font-size:13px}
.controls label{display:flex;gap:6px;align-items:center}
.controls input{width:96px}
button{font:inherit;font-weight:600;padding:5px 14px;border-radius:6px;cursor:pointer;
border:1px solid var(--accent);background:var(--accent);color:#fff}
button[aria-pressed=true]{background:#fff;color:var(--accent)}
.legend{display:flex;gap:6px;align-items:center}
.colorbar{width:140px;height:12px;border-radius:2px;display:block}
main{padding:16px 24px 32px}
nav.toc{display:flex;flex-wrap:wrap;gap:6px;margin:0 0 16px}
nav.toc a{max-width:220px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;
font-size:13px;padding:2px 10px;border-radius:12px;background:var(--card);
border:1px solid var(--line);color:var(--accent);text-decoration:none}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;
padding:16px 20px;margin:0 0 20px}
.index{display:inline-block;min-width:24px;margin-right:8px;padding:0 6px;border-radius:5px;
background:var(--accent);color:#fff;text-align:center;font-size:14px}
.item-body{display:flex;flex-wrap:wrap;gap:16px 28px;align-items:flex-start}
.side{flex:0 0 max(var(--panel),210px);width:max(var(--panel),210px)}
figure{margin:0}
.input img{display:block;width:100%;height:auto;border-radius:4px}
figcaption{font-size:12px;margin-top:3px;display:flex;flex-wrap:wrap;gap:0 6px;
align-items:baseline;min-width:0}
.preds{margin-top:10px}
.preds ol{list-style:none;margin:0;padding:0;font-size:13px}
.preds li{display:grid;grid-template-columns:1fr 48px 44px;gap:6px;align-items:center;
padding:1px 0}
.cls{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar{height:7px;background:var(--line);border-radius:4px;overflow:hidden}
.bar i{display:block;height:100%;background:var(--accent)}
.pct{text-align:right;font-variant-numeric:tabular-nums}
.gallery{margin-top:10px}
.thumbs{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:6px}
.thumbs img{display:block;width:100%;height:auto;border-radius:3px}
.thumbs figcaption{display:block;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.part-title{font-size:19px;margin:8px 0 6px}
.part-text{max-width:900px;margin:0 0 14px}
nav.toc a.part-link{font-weight:600;background:var(--accent);color:#fff}
.targets{flex:1 1 380px;min-width:0}
.target-row+.target-row{margin-top:14px;padding-top:12px;border-top:1px dashed var(--line)}
.label{overflow-wrap:anywhere}
.target-row .muted{font-weight:400}
.panels{display:grid;grid-template-columns:repeat(auto-fill,var(--panel));gap:10px 12px}
.stack{position:relative;width:var(--panel);aspect-ratio:var(--ar);background-size:100% 100%;
border-radius:4px;overflow:hidden;-webkit-print-color-adjust:exact;print-color-adjust:exact}
.stack img{position:absolute;left:0;top:0;width:100%;height:100%}
.heat{opacity:var(--alpha)}
.raw{display:none;image-rendering:pixelated}
.show-raw .raw{display:block}
.show-raw .heat{display:none}
.method{font-weight:600;color:var(--ink);min-width:0;overflow:hidden;text-overflow:ellipsis;
white-space:nowrap}
.flag{font-size:11px;font-weight:600;padding:0 5px;border-radius:3px;background:#fdecea;
color:#a4262c;white-space:nowrap}
.range{display:none;flex-basis:100%;font-size:11px;white-space:nowrap;overflow:hidden;
text-overflow:ellipsis}
.show-raw .range{display:inline}
.reading{font-size:12px;margin:14px 0 0}
.intro{margin:0 0 14px;max-width:900px}
.table-wrap{overflow-x:auto}
table{border-collapse:collapse;font-size:13px}
th,td{padding:5px 12px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
thead th{border-bottom:2px solid var(--line)}
thead th+th{text-align:right}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ci{color:var(--muted);font-size:12px}
tbody th{min-width:9em}
.pixelated img,.pixelated .stack{image-rendering:pixelated}
.settings td{overflow-wrap:anywhere;font-family:ui-monospace,Menlo,Consolas,monospace;
font-size:12px}
@media (max-width:700px){main{padding:12px}header.top{position:static;padding:8px 12px}}
@media print{
:root{--panel:128px;background:#fff;font-size:11px}
header.top{position:static;box-shadow:none;border:0;padding:0 0 8px}
.controls,nav.toc{display:none}
main{padding:0}
.card{border:0;border-radius:0;padding:0;margin:0 0 14px}
.item{border-top:1px solid var(--line);padding-top:10px}
.side,.target-row,figure,tr{break-inside:avoid}
h2,h3{break-after:avoid}
}
@page{margin:12mm}
"""

_SCRIPT = """\
(function () {
  var toggle = document.getElementById("view-toggle");
  if (toggle) {
    toggle.addEventListener("click", function () {
      var raw = document.body.classList.toggle("show-raw");
      toggle.setAttribute("aria-pressed", raw ? "true" : "false");
      toggle.textContent = raw ? "Show overlays" : "Show raw maps";
    });
  }
  document.querySelectorAll("input[data-var]").forEach(function (input) {
    input.addEventListener("input", function () {
      document.documentElement.style.setProperty(
        input.dataset.var, input.value + (input.dataset.unit || ""));
    });
  });
})();
"""
