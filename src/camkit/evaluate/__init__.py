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
- :mod:`~camkit.evaluate.sanity`: :func:`~camkit.evaluate.sanity.sanity_check`, the
  randomisation checks of every method with a verdict each (``camkit evaluate --sanity``);
- :mod:`~camkit.evaluate.report`: :func:`~camkit.evaluate.report.write_evaluation_report`,
  the HTML report (not imported here: ``import camkit`` does not load the report).

The data sets a spec names are :func:`camkit.data.files.evaluation_data`; the command is
:mod:`camkit.cli.evaluate`.
"""

from .harness import evaluate
from .metrics import (
    COMPLEXITY,
    DEFAULT_METRICS,
    FAITHFULNESS,
    FAITHFULNESS_EXTRA,
    METRICS,
    RANDOMISATION,
    REGION_METRICS,
    ROBUSTNESS,
    MetricSpec,
    Run,
    available_metrics,
)
from .regions import regions
from .results import EvaluationResults
from .samples import Batch, Failure, Sample, as_sample

__all__ = [
    "COMPLEXITY", "DEFAULT_METRICS", "FAITHFULNESS", "FAITHFULNESS_EXTRA", "METRICS",
    "RANDOMISATION", "REGION_METRICS", "ROBUSTNESS", "Batch",
    "EvaluationResults", "Failure", "MetricSpec", "Run", "Sample", "as_sample",
    "available_metrics", "evaluate", "regions",
]
