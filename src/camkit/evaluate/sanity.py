"""``camkit evaluate --sanity``: the randomisation checks of every method on the user's model
and data, with a verdict per method.

For each method, :func:`camkit.metrics.parameter_randomisation` re-initialises the model's
blocks from the top down on a copy of the model, cascading (cumulatively) and independently
(one block at a time), and compares each step's maps with the original ones. The verdict
(:func:`camkit.metrics.randomisation.passes`): a method **passes** when the median Spearman ρ
of ``|map|`` has fallen below 0.5 once the top half of the blocks is randomised (its maps
depend on the learned weights); otherwise its maps barely depend on them. The first image's
maps at every cascading step are kept for the report's strip.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..capture.hooks import borrowed
from ..methods import registry
from ..metrics.randomisation import (
    PASS_FRACTION,
    PASS_THRESHOLD,
    VERDICT_SIMILARITY,
    RandomisationCurves,
    model_explainer,
    parameter_randomisation,
    passes,
    verdict_step,
)
from ..metrics.similarity import SIMILARITIES
from ..progress import Progress
from ..targets import logits_of
from .harness import layer_names, model_device
from .samples import Batch, as_sample, read_items, stack_samples

ORDERS = ("cascading", "independent")


@dataclass
class MethodSanity:
    """One method's checks: per order the ``(n, S)`` similarities of every (image, target)
    pair at each step (step 0: the unrandomised copy), the first image's shown maps at each
    cascading step ``(S, H, W)`` in [0, 1], and the verdict with the median it read."""

    method: str
    steps: list[str]
    curves: dict[str, dict[str, np.ndarray]]  # order -> similarity -> (n, S)
    strip: np.ndarray
    passed: bool
    median: float

    def mean_curve(self, order: str, measure: str) -> np.ndarray:
        """``(S,)``: the mean over pairs at each step (NaN-free where defined)."""
        values = self.curves[order][measure]
        finite = np.isfinite(values)
        counts = finite.sum(axis=0)
        sums = np.where(finite, values, 0.0).sum(axis=0)
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


@dataclass
class SanityResults:
    """What :func:`sanity_check` measured, per method, with the settings of the run."""

    methods: dict[str, MethodSanity]
    targets: list[int]  # the first image's target class (the strips' class)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict_step(self) -> int:
        first = next(iter(self.methods.values()))
        return verdict_step(len(first.steps) - 1, PASS_FRACTION)

    def verdict(self, method: str) -> str:
        """One sentence: does ``method`` pass, and on which number."""
        m = self.methods[method]
        step = self.verdict_step
        where = (f"with the top {step} of {len(m.steps) - 1} blocks re-initialised "
                 f"(up to {m.steps[step]})")
        if m.passed:
            return (f"passes: its maps depend on the model's weights (median ρ of |map| "
                    f"{m.median:.2f} < {PASS_THRESHOLD} {where})")
        shown = "undefined (constant maps)" if math.isnan(m.median) else f"{m.median:.2f}"
        return (f"fails: its maps barely depend on the model's weights (median ρ of |map| "
                f"{shown} ≥ {PASS_THRESHOLD} {where})")

    def to_markdown(self) -> str:
        lines = ["# Sanity checks: model-parameter randomisation", "",
                 "Cascading randomisation, top block first; ρ is Spearman's rank correlation of "
                 "|map| with the original map, mean over the (image, class) pairs.", ""]
        lines += [f"- **{method}** {self.verdict(method)}" for method in self.methods]
        steps = next(iter(self.methods.values())).steps
        lines += ["", "| step | randomised | " + " | ".join(self.methods) + " |",
                  "| ---: | --- |" + " ---: |" * len(self.methods)]
        for s, name in enumerate(steps):
            cells = [f"{m.mean_curve('cascading', VERDICT_SIMILARITY)[s]:.3f}"
                     for m in self.methods.values()]
            lines.append(f"| {s} | {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        def clean(a: np.ndarray) -> Any:
            return [[float(v) if math.isfinite(v) else None for v in row] for row in a]

        return json.dumps({
            "settings": self.settings, "threshold": PASS_THRESHOLD,
            "verdict_step": self.verdict_step,
            "methods": {name: {"passed": m.passed, "median": m.median, "steps": m.steps,
                               "curves": {o: {k: clean(v) for k, v in c.items()}
                                          for o, c in m.curves.items()}}
                        for name, m in self.methods.items()}}, indent=1, default=str)

    def save(self, out: str | Path) -> dict[str, Path]:
        """Write ``sanity.md`` and ``sanity.json`` into ``out``."""
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"sanity-md": folder / "sanity.md", "sanity-json": folder / "sanity.json"}
        paths["sanity-md"].write_text(self.to_markdown(), encoding="utf-8")
        paths["sanity-json"].write_text(self.to_json(), encoding="utf-8")
        return paths


def shown_maps(raw: Tensor, relu: bool) -> Tensor:
    """``(..., H, W)`` maps before ReLU (upsampled) → as camkit shows them: ReLU when the
    method applies one, then each map scaled by its own min and max (zeros when constant)."""
    maps = raw.clamp(min=0) if relu else raw
    flat = maps.flatten(-2)
    low, span = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True) - flat.amin(-1, True)
    return ((flat - low) / span.where(span > 0, 1.0)).view(maps.shape)


def _targets(model: nn.Module, batch: Batch) -> Tensor:
    """``(B, 1)``: the first labelled class, or the model's top-1 class."""
    if batch.targets is not None:
        return batch.targets[:, :1]
    with borrowed(model), torch.no_grad():
        return logits_of(model(batch.x)).argmax(dim=1, keepdim=True)


def sanity_check(model: nn.Module, data: Any, methods: list[str], layer: Any = None, *,
                 images: int = 8, batch_size: int = 8, targets: str = "auto",
                 layers: Any = None, seed: int = 0, progress: bool | None = None,
                 method_options: dict[str, dict[str, Any]] | None = None) -> SanityResults:
    """Run the cascading and independent randomisation tests of ``methods`` on the first
    ``images`` items of ``data`` (items as :func:`camkit.evaluate` reads them), explaining
    the labelled class (``targets="label"``) or the predicted one (``"predicted"``;
    ``"auto"``: the label when every image has one). The model is never modified."""
    for method in methods:
        registry.get_method(method)
    items, _ = read_items(data, images)
    samples = [as_sample(item, index) for index, item in items]
    if not samples:
        raise ValueError("the sanity checks need at least one image")
    use_labels = targets == "label" or (targets == "auto" and all(s.positives for s in samples))
    device, names = model_device(model), layer_names(model, layer)
    batches = [stack_samples(samples[i:i + batch_size], device, use_labels)
               for i in range(0, len(samples), batch_size)]
    found: dict[str, MethodSanity] = {}
    first_targets: list[int] = []
    with Progress(len(methods) * len(batches) * len(ORDERS), "sanity", progress) as bar:
        for method in methods:
            explainer = model_explainer(method, names, seed=seed,
                                        **(method_options or {}).get(method, {}))
            runs: dict[str, list[RandomisationCurves]] = {o: [] for o in ORDERS}
            for b, batch in enumerate(batches):
                classes = _targets(model, batch)
                first_targets = classes[0].tolist() if b == 0 else first_targets
                for order in ORDERS:
                    runs[order].append(parameter_randomisation(
                        model, batch.x, classes, explainer, order=order, layers=layers,
                        seed=seed, keep_maps=(b == 0 and order == "cascading")))
                    bar.update(1)
            found[method] = _method_sanity(method, runs)
    settings = {"images": len(samples), "methods": methods, "seed": seed,
                "threshold": f"median ρ of |map| < {PASS_THRESHOLD} after the top "
                             f"{PASS_FRACTION:.0%} of the blocks"}
    return SanityResults(found, first_targets, settings)


def _method_sanity(method: str, runs: dict[str, list[RandomisationCurves]]) -> MethodSanity:
    cascading = runs["cascading"]
    joined = RandomisationCurves(cascading[0].steps, "cascading", {
        name: torch.cat([c.similarity[name] for c in cascading]) for name in SIMILARITIES})
    passed, median = passes(joined)
    curves = {order: {name: torch.cat([c.similarity[name].flatten(0, 1) for c in found])
                      .cpu().numpy().astype(np.float64) for name in SIMILARITIES}
              for order, found in runs.items()}
    assert cascading[0].maps is not None
    relu = registry.get_method(method).relu
    strip = shown_maps(cascading[0].maps[0, 0], relu).cpu().numpy()
    return MethodSanity(method, cascading[0].steps, curves, strip, passed, median)
