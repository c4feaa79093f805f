"""What :func:`camkit.evaluate` measured, and its tables as Markdown, CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics.stats import Summary, summarize
from .metrics import METRICS
from .samples import Failure


@dataclass
class EvaluationResults:
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
        head = ["method", *[f"{m} {METRICS[m].arrow}" for m in self.metrics], "explain ms/img"]
        means = _md_table(head, [
            [method, *[_cell(self.summary(method, m), len(self.pairs[method]))
                       for m in self.metrics], _ms(self.seconds_per_image(method))]
            for method in self.methods])
        timing = _md_table(["method", *self.metrics], [
            [method, *[_ms(self.seconds_per_image(method, m)) for m in self.metrics]]
            for method in self.methods])
        settings = "; ".join(f"{k}: {v}" for k, v in self.settings.items())
        unit = "runs' means" if "runs" in self.settings else "(image, class) pairs"
        parts = [
            "# Evaluation", "", settings, "",
            f"Mean ± half-width of the 95 % confidence interval (Student t over the {unit}); "
            "`n` is shown where some values were undefined (no annotation, confidence below "
            "1e-3) or failed. ↑ higher is better, ↓ lower is better.", "",
            *means, "", "## Metric time per image (ms)", "", *timing, "",
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
    def combine(cls, runs: Sequence[EvaluationResults],
                labels: Sequence[str] | None = None) -> EvaluationResults:
        """Runs of the same methods and metrics (e.g. one per seed) as one table whose unit is
        the run: each cell's values are the runs' means, so its interval is the spread across
        runs. Times are totals over the runs."""
        if not runs:
            raise ValueError("combine needs at least one EvaluationResults")
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


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table: ``head``, then ``rows`` of the same width, numbers right-aligned."""
    rule = ["---"] + ["---:"] * (len(head) - 1)
    return [_md_row(head), _md_row(rule), *(_md_row(row) for row in rows)]


def _ms(seconds: float) -> str:
    return "—" if not math.isfinite(seconds) else f"{1000 * seconds:.1f}"


def _cell(s: Summary, pairs: int) -> str:
    if s.n == 0:
        return "—"
    text = f"{s.mean:.4g}" if not math.isfinite(s.high) else f"{s.mean:.4g} ± {s.high - s.mean:.2g}"
    return text if s.n == pairs else f"{text} (n {s.n})"
