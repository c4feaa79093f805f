"""The HTML report of an evaluation: its table, a few samples explained, the sanity checks
when run (a strip of one image's maps per method as the blocks are randomised, the
similarity curves and the verdicts), its settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from .. import api
from ..data.images import Preprocess
from ..metrics.randomisation import PASS_THRESHOLD
from ..viz.charts import line_chart
from ..viz.report import (
    ReportItem,
    ReportSection,
    TargetRow,
    evaluation_metrics,
    report_items,
    write_report,
)
from ..zoo import LoadedModel
from .harness import model_device
from .results import EvaluationResults
from .samples import as_sample, stack_samples
from .sanity import SanityResults

SANITY_READING = (
    "Each method's maps were recomputed for the same classes while the network's blocks were "
    "re-initialised from the output down, on a copy of the model: cascading (the blocks so far "
    "all randomised) and independent (one block at a time). A map that explains the model must "
    "change once the weights that made the decision are gone. The strip shows the first "
    "image's map at each cascading step; the chart, per step, the similarity to the original "
    "map averaged over the images (Spearman's ρ of |map| and of the signed map, SSIM of |map|; "
    "step 0 is the unrandomised copy). A method passes when the median ρ of |map| is below "
    f"{PASS_THRESHOLD} once the top half of the blocks is randomised (dashed line). ")


def _picture(x: Tensor, preprocess: Preprocess) -> np.ndarray:
    """The ``(H, W, 3)`` uint8 picture of a ``(3, H, W)`` tensor normalised by ``preprocess``."""
    mean, std = (x.new_tensor(v).view(3, 1, 1) for v in (preprocess.mean, preprocess.std))
    rgb = ((x * std + mean).clamp(0, 1) * 255).round().byte()
    return rgb.permute(1, 2, 0).cpu().numpy()


def write_evaluation_report(path: str | Path, results: EvaluationResults, model: nn.Module,
                            data: Any, layer: Any, loaded: LoadedModel, images: int = 4,
                            sanity: SanityResults | None = None) -> Path:
    """The HTML report of an evaluation: the method × metric table of ``results`` (mean, 95 %
    interval, explanation time), the first ``images`` samples of ``data`` explained by every
    evaluated method (for the targets the run used: labels or predictions), and the settings.

    ``data``'s images are tensors normalised by ``loaded.preprocess``, as
    :func:`camkit.data.files.evaluation_data` gives them. ``sanity`` adds the part of
    :func:`sanity_section` (its strips show ``data``'s first image)."""
    samples = [as_sample(data[i], i) for i in range(min(images, len(data)))]
    items = []
    if samples:
        batch = stack_samples(samples, model_device(model), results.settings["targets"] == "label")
        expl = api.explain(model, batch.x, batch.targets, results.methods, layer,
                           seed=results.settings["seed"])
        items = report_items(expl, [_picture(x, loaded.preprocess) for x in batch.x],
                             loaded.class_names, names=[s.name for s in samples])
    parts: list[ReportItem | ReportSection] = list(items)
    if sanity is not None:
        picture = _picture(as_sample(data[0], 0).image, loaded.preprocess)
        names = loaded.class_names
        label = names[sanity.targets[0]] if names else f"class {sanity.targets[0]}"
        parts.append(sanity_section(sanity, picture, label))
    return write_report(path, parts, results.settings,
                        evaluation_metrics(results) if results.metrics else None,
                        title="camkit evaluation")


def sanity_section(sanity: SanityResults, picture: np.ndarray, label: str) -> ReportSection:
    """The report's part of the sanity checks: the verdicts, a table, a similarity chart per
    method and per method a strip of ``picture``'s map (class ``label``) at every cascading
    step."""
    step = sanity.verdict_step
    figures, items, table = [], [], {}
    for method, m in sanity.methods.items():
        chart = line_chart({
            "Spearman |map|, cascading": m.mean_curve("cascading", "spearman-abs"),
            "Spearman signed, cascading": m.mean_curve("cascading", "spearman"),
            "SSIM |map|, cascading": m.mean_curve("cascading", "ssim"),
            "Spearman |map|, independent": m.mean_curve("independent", "spearman-abs"),
        }, threshold=PASS_THRESHOLD, title=f"{method}: similarity to the original map")
        figures.append((chart, f"{method}: {'passes' if m.passed else 'fails'}"))
        strip = {f"{s}. {name}": m.strip[s][None] for s, name in enumerate(m.steps)}
        items.append(ReportItem(f"{method} ({'passes' if m.passed else 'fails'}): "
                                "cascading randomisation", picture, [TargetRow(label)], strip))
        table[method] = {f"median ρ |map| at step {step} ↓": m.median,
                         f"mean ρ |map| at step {step} ↓": float(
                             m.mean_curve("cascading", "spearman-abs")[step]),
                         f"SSIM at step {step} ↓": float(m.mean_curve("cascading", "ssim")[step]),
                         "passes (1 = yes)": float(m.passed)}
    verdicts = " ".join(f"{method} {sanity.verdict(method)}." for method in sanity.methods)
    return ReportSection("Sanity checks: model-parameter randomisation", items,
                         SANITY_READING + verdicts, table, figures)
