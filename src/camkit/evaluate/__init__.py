"""``camkit.evaluate``: methods × metrics over a data set, as a table with confidence intervals.

The modules, in the order they build on each other:

- :mod:`~camkit.evaluate.samples`: the accepted data items, validated as :class:`Sample`,
  failures, and batches on the device;
- :mod:`~camkit.evaluate.regions`: the annotated regions of each target (masks, boxes, leaks,
  grid cells) for the localisation metrics;
- :mod:`~camkit.evaluate.metrics`: one method's maps on one batch (:class:`Run`), the metric
  adapters and the registry (:data:`METRICS`, :func:`available_metrics`);
- :mod:`~camkit.evaluate.results`: :class:`EvaluationResults` and its Markdown, CSV and JSON;
- :mod:`~camkit.evaluate.harness`: the loop, :func:`evaluate` (targets, timing, failures);
- :mod:`~camkit.evaluate.report`: :func:`write_evaluation_report`, the HTML report;
- :mod:`~camkit.evaluate.command`: the data sets named on the command line and the
  ``camkit evaluate`` subcommand.
"""

from .command import ImageFiles, add_parser, data_from_spec, metrics_for, run
from .harness import evaluate
from .metrics import (
    DEFAULT_METRICS,
    FAITHFULNESS,
    METRICS,
    REGION_METRICS,
    ROBUSTNESS,
    MetricSpec,
    Run,
    available_metrics,
)
from .regions import regions
from .report import write_evaluation_report
from .results import EvaluationResults
from .samples import Batch, Failure, Sample, as_sample

__all__ = [
    "DEFAULT_METRICS", "FAITHFULNESS", "METRICS", "REGION_METRICS", "ROBUSTNESS", "Batch",
    "EvaluationResults", "Failure", "ImageFiles", "MetricSpec", "Run", "Sample", "add_parser",
    "as_sample", "available_metrics", "data_from_spec", "evaluate", "metrics_for", "regions",
    "run", "write_evaluation_report",
]
