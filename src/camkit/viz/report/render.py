"""The report page: :class:`ReportItem` s and :class:`ReportSection` s rendered by Jinja2
from the package's templates (``templates/report.html.j2`` with its CSS and script).

This module numbers the images across the page, encodes the pictures and formats the
numbers; the template holds all of the markup and escapes every text it is given.
"""

from __future__ import annotations

import functools
import math
import os
import platform
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from itertools import groupby
from pathlib import Path
from typing import Any, NamedTuple

import jinja2
import numpy as np

from camkit.viz.report.images import colorbar_uri, map_uri, png_uri
from camkit.viz.report.model import Metrics, MetricValue, ReportItem, ReportSection, TargetRow

_VERSIONED = ("camkit", "torch", "torchvision", "numpy", "pillow")


class Numbered(NamedTuple):
    """An image of the page: its number (from 1, across every part) and its input's URI."""

    number: int
    item: ReportItem
    input_uri: str


class Part(NamedTuple):
    """A part of the page, numbered from 1, with its numbered images."""

    number: int
    section: ReportSection
    images: list[Numbered]


class Panel(NamedTuple):
    """What one panel shows: the map and the raw view of ``method`` for one target."""

    method: str
    label: str
    heat_uri: str
    raw_uri: str
    caption: str
    constant: bool


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
    parts = _numbered_parts(items)
    images = [image for part in parts for image in part.images]
    flat = [image.item for image in images]
    return _templates().get_template("report.html.j2").render(
        title=title,
        alpha=alpha,
        parts=parts,
        images=images,
        summary=_summary(flat),
        colorbar=colorbar_uri() if flat else "",
        show_nav=len(flat) >= 2 or any(part.section.title for part in parts),
        metrics=metrics,
        settings={**(settings or {}), **environment()},
    )


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


@functools.cache
def _templates() -> jinja2.Environment:
    """The package's templates, every inserted text escaped."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("camkit.viz.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(setting=setting_text, facts=target_facts)
    env.globals.update(panel=panel, metrics_table=metrics_table, png_uri=png_uri)
    return env


def _numbered_parts(entries: Sequence[ReportItem | ReportSection]) -> list[Part]:
    """The parts of the page, in order, its images numbered across the whole page."""
    parts, count = [], 0
    for j, section in enumerate(_sections(entries), 1):
        images = [Numbered(count + n, item, png_uri(item.image))
                  for n, item in enumerate(section.items, 1)]
        count += len(images)
        parts.append(Part(j, section, images))
    return parts


def _sections(entries: Sequence[ReportItem | ReportSection]) -> list[ReportSection]:
    """``entries`` as sections: each run of images outside a section becomes an untitled
    one."""
    sections: list[ReportSection] = []
    for is_section, run in groupby(entries, key=lambda e: isinstance(e, ReportSection)):
        group = list(run)
        if is_section:
            sections.extend(e for e in group if isinstance(e, ReportSection))
        else:
            sections.append(ReportSection("", [e for e in group if isinstance(e, ReportItem)]))
    return sections


def _summary(items: list[ReportItem]) -> str:
    """The header's line: how many images and methods, and targets per image."""
    methods = list(dict.fromkeys(m for item in items for m in item.maps))
    targets = sorted({len(item.targets) for item in items})
    facts = [_count(len(items), "image"), _count(len(methods), "method")]
    if targets:
        span = f"{targets[0]}" if len(targets) == 1 else f"{targets[0]}–{targets[-1]}"
        facts.append(f"{span} target{'s' if targets[-1] > 1 else ''} per image")
    return " · ".join(facts)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def panel(item: ReportItem, method: str, k: int) -> Panel:
    """The panel of ``method`` for target ``k`` of ``item``; without a raw map its raw view
    is the normalised map."""
    heat = item.maps[method][k]
    heat_uri = map_uri(heat)
    raw = item.raw.get(method)
    raw_uri, caption = (_raw_view(raw[k]) if raw is not None
                        else (heat_uri, "no raw map: normalised map"))
    return Panel(method, item.targets[k].label, heat_uri, raw_uri, caption,
                 bool(heat.max() <= heat.min()))


def _raw_view(raw_hw: np.ndarray) -> tuple[str, str]:
    """The raw map scaled from its own min to its max, and the caption giving that range."""
    low, high = float(raw_hw.min()), float(raw_hw.max())
    if high <= low:
        return map_uri(np.zeros_like(raw_hw)), f"raw: constant {format_number(low)}"
    caption = f"raw: {format_number(low)} to {format_number(high)}"
    return map_uri((raw_hw - low) / (high - low)), caption


def target_facts(target: TargetRow) -> str:
    """``score … · p …%``, the parts that are known."""
    facts = [f"score {format_number(target.score)}" if target.score is not None else "",
             f"p {100 * target.probability:.1f}%" if target.probability is not None else ""]
    return " · ".join(f for f in facts if f)


class MetricCell(NamedTuple):
    """A metrics table cell's text: the mean and, when computed, ``low, high``; ``mean`` is
    empty for a missing or undefined (NaN) value."""

    mean: str
    interval: str


def metrics_table(metrics: Metrics) -> tuple[list[str], list[tuple[str, list[MetricCell]]]]:
    """The columns (every metric, in first-seen order) and per method its row of cells."""
    columns = list(dict.fromkeys(name for row in metrics.values() for name in row))
    rows = [(method, [_metric_cell(row.get(c)) for c in columns])
            for method, row in metrics.items()]
    return columns, rows


def _metric_cell(value: MetricValue | None) -> MetricCell:
    mean, low, high = value if isinstance(value, tuple) else (value, math.nan, math.nan)
    if mean is None or not math.isfinite(mean):
        return MetricCell("", "")
    interval = (f"{format_number(low)}, {format_number(high)}"
                if math.isfinite(low) and math.isfinite(high) else "")
    return MetricCell(format_number(float(mean)), interval)


def format_number(value: float) -> str:
    """Three significant digits, or a whole number with thousands separators from 10⁴."""
    return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.3g}"


def setting_text(value: Any) -> str:
    """A setting as text: mappings as ``k=v`` and collections comma separated."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={setting_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(map(setting_text, value))
    return str(value)
