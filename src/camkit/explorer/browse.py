"""The Browse tab's logic: the maps of a ``camkit explain-dataset`` folder, with the metrics
of a ``camkit evaluate`` run, as rows to sort, filter and page through.

Only the small per-map values (targets, scores, constant flags, metrics) are read for every
image; maps and image files are read for the rows of the page shown, one page at a time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from camkit import zoo
from camkit.batch import DatasetResults, open_results
from camkit.batch.sources import FileSource, as_source
from camkit.data.images import PathLike, Preprocess, load_image
from camkit.viz import overlay

SCORE = "score"  # the target score, a sort key besides the metrics
GREY = 128


@dataclass
class Row:
    """One stored map: image ``id``, ``method``, its ``k``-th target (class index and name),
    the target score, whether the map came out constant, and the evaluated metrics."""

    id: str
    method: str
    k: int
    class_index: int
    class_name: str
    score: float
    constant: bool
    metrics: dict[str, float] = field(default_factory=dict)

    def value(self, key: str) -> float:
        """The row's value of a sort key: :data:`SCORE` or a metric (NaN when missing)."""
        return self.score if key == SCORE else self.metrics.get(key, math.nan)

    @property
    def caption(self) -> str:
        shown = ", ".join(f"{name} {value:.3g}" for name, value in self.metrics.items())
        flag = " · constant" if self.constant else ""
        return f"{self.id} · {self.method} · {self.class_name}{flag}" + (
            f" · {shown}" if shown else "")


@dataclass
class Page:
    """The rows of one page of a query: page ``number`` of ``pages`` (from 0), whose first
    row is the ``start``-th of the ``matched`` rows."""

    rows: list[Row]
    number: int
    pages: int
    matched: int
    start: int


@dataclass
class Evaluation:
    """The per-sample values of an evaluate ``results.json`` (at ``path``):
    ``values[(sample, method, class)][metric]``, and which metrics are better high."""

    path: Path
    values: dict[tuple[str, str, int], dict[str, float]]
    higher_is_better: dict[str, bool]

    @classmethod
    def load(cls, path: PathLike) -> Evaluation:
        """Read ``results.json`` (or the folder holding it)."""
        file = Path(path)
        file = file / "results.json" if file.is_dir() else file
        document = json.loads(file.read_text(encoding="utf-8"))
        values: dict[tuple[str, str, int], dict[str, float]] = {}
        for method, table in document["per_sample"].items():
            metrics = {k: v for k, v in table.items() if k != "pairs"}
            for n, (sample, cls_index) in enumerate(table["pairs"]):
                values[(str(sample), method, int(cls_index))] = {
                    k: math.nan if v[n] is None else float(v[n]) for k, v in metrics.items()}
        better = {r["metric"]: bool(r["higher_is_better"]) for r in document["rows"]}
        return cls(file, values, better)


class Browser:
    """Sorted, filtered pages over a results folder.

    Args:
        results: a ``camkit explain-dataset`` folder.
        class_names: the model's class names (for captions and the class filter).
        preprocess: the run's preprocessing, to draw maps on the images it saw.
        evaluation: an optional ``camkit evaluate`` output (its ``results.json`` or folder);
            its values join the rows whose image id is the evaluated sample's name.
    """

    def __init__(self, results: PathLike, class_names: Sequence[str], preprocess: Preprocess,
                 evaluation: PathLike | None = None) -> None:
        self.results: DatasetResults = open_results(results)
        self.preprocess = preprocess
        self.evaluation = Evaluation.load(evaluation) if evaluation is not None else None
        self.source = _file_source(self.results)
        self.rows = self._rows(list(class_names))
        self.metrics = list(self.evaluation.higher_is_better) if self.evaluation else []

    def _rows(self, class_names: list[str]) -> list[Row]:
        ids = list(self.results)
        targets, scores = self.results.targets(ids), self.results.scores(ids)
        values = self.evaluation.values if self.evaluation else {}
        rows = []
        for method in self.results.methods:
            constant = self.results.constant(method, ids)
            for n, image in enumerate(ids):
                for k, cls_index in enumerate(targets[n].tolist()):
                    rows.append(Row(image, method, k, cls_index, class_names[cls_index],
                                    float(scores[n, k]), bool(constant[n, k]),
                                    dict(values.get((image, method, cls_index), {}))))
        return rows

    @property
    def sort_keys(self) -> list[str]:
        return [*self.metrics, SCORE]

    @property
    def class_names(self) -> list[str]:
        return sorted({r.class_name for r in self.rows})

    def worst_first(self, key: str) -> bool:
        """Whether "worst first" sorts ``key`` descending (a metric better low)."""
        return self.evaluation is not None and not self.evaluation.higher_is_better.get(
            key, True)

    def query(self, sort: str = SCORE, *, worst: bool = True, method: str | None = None,
              class_name: str | None = None, constant_only: bool = False, page: int = 0,
              page_size: int = 24) -> Page:
        """Rows matching the filters (``None`` keeps all), sorted by ``sort`` (worst first,
        or best first); undefined values go last. Returns page ``page`` (from 0)."""
        if sort not in self.sort_keys:
            raise ValueError(f"cannot sort by {sort!r}; one of {self.sort_keys}")
        kept = [r for r in self.rows
                if (method is None or r.method == method)
                and (class_name is None or r.class_name == class_name)
                and (not constant_only or r.constant)]
        descending = self.worst_first(sort) == worst
        defined = [r for r in kept if not math.isnan(r.value(sort))]
        defined.sort(key=lambda r: r.value(sort), reverse=descending)
        ordered = defined + [r for r in kept if math.isnan(r.value(sort))]
        pages = max(1, math.ceil(len(ordered) / page_size))
        number = min(max(page, 0), pages - 1)
        start = number * page_size
        return Page(ordered[start:start + page_size], number, pages, len(ordered), start)

    def view(self, image: str) -> np.ndarray:
        """The ``(S, S, 3)`` uint8 picture the run explained (grey when the images cannot be
        found: a Python data set, or files moved since)."""
        size = self.results.settings["input_size"]
        if self.source is not None and image in self.source.ids:
            try:
                path = self.source.paths[self.source.ids.index(image)]
                return np.asarray(self.preprocess.view(load_image(path)))
            except (OSError, ValueError):
                pass
        return np.full((size, size, 3), GREY, np.uint8)

    def pictures(self, rows: Sequence[Row], alpha: float = 0.5) -> list[np.ndarray]:
        """Each row's map over its image; reads the maps of these rows only."""
        views = {image: self.view(image) for image in dict.fromkeys(r.id for r in rows)}
        pictures = []
        for r in rows:
            map_hw = self.results.maps(r.method, [r.id])[0, r.k]
            pictures.append(overlay(views[r.id], map_hw, alpha))
        return pictures

    def side_by_side(self, row: Row, alpha: float = 0.5) -> list[tuple[np.ndarray, str]]:
        """Every stored method's map of the same image and target, with captions."""
        same = [Row(row.id, m, row.k, row.class_index, row.class_name, math.nan, False)
                for m in self.results.methods]
        return [(picture, r.method) for picture, r in zip(self.pictures(same, alpha), same,
                                                           strict=True)]


def _file_source(results: DatasetResults) -> FileSource | None:
    """The image files of the run, when its data was a ``folder:`` or ``list:`` spec."""
    spec = results.manifest.get("job", {}).get("data")
    try:
        source = as_source(spec) if isinstance(spec, str) else None
    except (ValueError, FileNotFoundError, OSError):
        return None
    return source if isinstance(source, FileSource) else None


def open_browser(results: PathLike, evaluation: PathLike | None,
                 loaded: zoo.LoadedModel) -> Browser:
    """A :class:`Browser` of ``results``, drawing on the images as the run's model saw them:
    with ``loaded``'s preprocessing when the run used the same architecture, else that of
    an untrained copy of the run's architecture (preprocessing depends on it alone)."""
    arch = open_results(results).settings["model"]["arch"]
    if arch != loaded.arch:
        loaded = zoo.load_model(arch, random_init=True)
    return Browser(results, loaded.class_names, loaded.preprocess, evaluation)


def describe(page: Page) -> str:
    """``"maps 25–48 of 1000 (page 2 of 42)"``."""
    if not page.matched:
        return "no maps match these filters"
    return (f"maps {page.start + 1}–{page.start + len(page.rows)} of {page.matched} "
            f"(page {page.number + 1} of {page.pages})")


def as_filter(choice: Any, everything: str) -> Any:
    """A drop-down's choice as a filter value: ``None`` for the "all" entry."""
    return None if choice in (None, "", everything) else choice
