"""The HTML report of an evaluation: its table, a few samples explained, its settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from .. import api
from ..data.images import Preprocess
from ..viz.report import evaluation_metrics, report_items, write_report
from ..zoo import LoadedModel
from .harness import model_device
from .results import EvaluationResults
from .samples import as_sample, stack_samples


def _picture(x: Tensor, preprocess: Preprocess) -> np.ndarray:
    """The ``(H, W, 3)`` uint8 picture of a ``(3, H, W)`` tensor normalised by ``preprocess``."""
    mean, std = (x.new_tensor(v).view(3, 1, 1) for v in (preprocess.mean, preprocess.std))
    rgb = ((x * std + mean).clamp(0, 1) * 255).round().byte()
    return rgb.permute(1, 2, 0).cpu().numpy()


def write_evaluation_report(path: str | Path, results: EvaluationResults, model: nn.Module,
                            data: Any, layer: Any, loaded: LoadedModel, images: int = 4) -> Path:
    """The HTML report of an evaluation: the method × metric table of ``results`` (mean, 95 %
    interval, explanation time), the first ``images`` samples of ``data`` explained by every
    evaluated method (for the targets the run used: labels or predictions), and the settings.

    ``data``'s images are tensors normalised by ``loaded.preprocess``, as
    :func:`camkit.data.files.evaluation_data` gives them."""
    samples = [as_sample(data[i], i) for i in range(min(images, len(data)))]
    items = []
    if samples:
        batch = stack_samples(samples, model_device(model), results.settings["targets"] == "label")
        expl = api.explain(model, batch.x, batch.targets, results.methods, layer,
                           seed=results.settings["seed"])
        items = report_items(expl, [_picture(x, loaded.preprocess) for x in batch.x],
                             loaded.class_names, names=[s.name for s in samples])
    return write_report(path, items, results.settings, evaluation_metrics(results),
                        title="camkit evaluation")
