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
viridis map, a palette PNG, over the input image, which is embedded once per image as a CSS
background. The PNG figures written by :func:`save_explanation` are blended by
:func:`camkit.viz.overlay` itself.

The modules, by job: ``model`` (the data), ``adapters`` (from explanations and results to
items and files), ``render`` (the page, rendered by Jinja2 from the package's ``templates/``),
``images`` (``data:`` URIs) and ``figures`` (PNG grids). Above :mod:`camkit.api`: it takes
:class:`~camkit.Explanation` from there, and nothing below imports it (``camkit`` exports
:func:`explanation_to_html` and :func:`save_explanation` on first use).
"""

from camkit.viz.report.adapters import (
    SavedExplanation,
    evaluation_metrics,
    explanation_to_html,
    report_from_results,
    report_item,
    report_items,
    save_explanation,
)
from camkit.viz.report.figures import grid_rows, save_grid
from camkit.viz.report.model import (
    HasReport,
    Metrics,
    MetricValue,
    ReportItem,
    ReportSection,
    TargetRow,
)
from camkit.viz.report.render import environment, render_report, write_report

__all__ = [
    "HasReport",
    "MetricValue",
    "Metrics",
    "ReportItem",
    "ReportSection",
    "SavedExplanation",
    "TargetRow",
    "environment",
    "evaluation_metrics",
    "explanation_to_html",
    "grid_rows",
    "render_report",
    "report_from_results",
    "report_item",
    "report_items",
    "save_explanation",
    "save_grid",
    "write_report",
]
