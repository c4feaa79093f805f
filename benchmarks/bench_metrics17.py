"""Issue 17's metrics side by side with Quantus (and ROAD with pytorch-grad-cam): the same
per-sample values on the same model, inputs, maps and targets, and the speed on one batch.

Model: torchvision resnet18, random weights (seed 0), 10 classes, in eval mode; 64 images of
3 × 64 × 64 standard normal noise (seed 1); targets: the top-1 class. Maps: camkit's Grad-CAM
at ``layer3`` before ReLU, upsampled to 64 × 64, min-max normalised, plus 1e-3 × uniform noise
so that no two pixels tie (the libraries break ties differently). Quantus's ROAD indexes the
channel-broadcast map against the pixel grid and fails on RGB input (IndexError), and its pixel
flipping and faithfulness correlation count channel entries, not pixels: those three run on a
grey version (1 × 64 × 64 images, the model repeating the channel three times), where a
feature is a pixel in both libraries. The peers are imported here only.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torchvision
from torch import Tensor, nn

import camkit
from camkit.metrics import (
    complexity,
    faithfulness_correlation,
    model_explainer,
    parameter_randomisation,
    pixel_flipping_curve,
    random_logit,
    road,
    road_curve,
    sparseness,
    top1_confidence,
)
from camkit.metrics.road import imputation_noise
from camkit.metrics.robustness import method_explainer
from camkit.metrics.scoring import make_scorer
from camkit.metrics.similarity import SIMILARITIES, ssim
from camkit.postprocess import upsample
from common import Row, interleaved_samples, row, setup

VALUES, SPEED = "metrics17-values", "metrics17-speed"
SAME, FASTER = "<= 1e-4", ">= 10"
BATCH, SIDE, CLASSES = int(os.environ.get("BENCH_METRICS17_BATCH", 64)), 64, 10
LAYER = "layer3"
PERCENTAGES = [10, 20, 30, 40, 50, 60, 70, 80, 90]
FC_RUNS, FC_SUBSET, FC_SEED = 100, 224, 7
PF_STEPS = 64  # 64 pixels per step on 64 × 64

DESCRIPTIONS = {
    VALUES: (
        "Max |Δ| of per-sample values between camkit and the peer on the same resnet18 (random "
        "weights, 10 classes), 64 noise images of 64 × 64, top-1 targets and Grad-CAM maps "
        "(layer3, before ReLU, tie-free). Rows marked `explained` feed both sides the same "
        "random draws (subsets, imputation noise, randomised models, other classes) or "
        "recompute the peer's variant where the definitions differ; the rows before them show "
        "the difference the draws or definitions make. Quantus 0.6.0, grad-cam 1.5.7."),
    SPEED: (
        "Seconds for the 64 images, each library called as documented on the same work as the "
        "value rows (camkit's batching at its default, the chunk size found by timing); the "
        "value is the peer's time over camkit's (× faster), the median of round-robin rounds; "
        "for the metrics that score perturbed images the note also gives camkit's time over "
        "the plain forward passes they need (their floor: a library can only be much faster "
        "than a peer that wastes model evaluations). "
        "Explainer-bound checks (MPRT, random logit) call camkit's Grad-CAM in both libraries: "
        "their time is the explanations'. Measured on 2 shared CPU cores: see the load note."),
}


class Grey(nn.Module):
    """A one-channel front for a three-channel model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.expand(-1, 3, -1, -1))


def case() -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=CLASSES).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, SIDE, SIDE, generator=g)
    with torch.no_grad():
        targets = model(x).argmax(dim=1, keepdim=True)
    raw = camkit.explain(model, x, targets, "gradcam", LAYER).raw["gradcam"]
    maps = upsample(raw, (SIDE, SIDE))
    low = maps.amin(dim=(2, 3), keepdim=True)
    maps = (maps - low) / (maps.amax(dim=(2, 3), keepdim=True) - low)
    return model, x, maps + 1e-3 * torch.rand(maps.shape, generator=g), targets


def diff(a: Any, b: Any) -> float:
    return float(np.nanmax(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def quantus_metric(name: str, **options: Any) -> Any:
    import quantus

    return getattr(quantus, name)(disable_warnings=True, **options)


def complexity_rows(x: Tensor, maps: Tensor, targets: Tensor, model: nn.Module) -> list[Row]:
    data = dict(model=model, x_batch=x.numpy(), y_batch=targets[:, 0].numpy(),
                a_batch=maps.numpy(), device="cpu")
    rows, calls = [], {}
    for metric, ours, theirs in (("sparseness", sparseness, "Sparseness"),
                                 ("complexity", complexity, "Complexity")):
        quantus = quantus_metric(theirs)
        rows.append(row(VALUES, f"{metric} vs Quantus {theirs}",
                        diff(ours(maps)[:, 0], quantus(**data)), "max |Δ|",
                        "Quantus adds 1e-7 (Gini) or 1e-12 (log) to the map", SAME))
        calls[metric] = ({"camkit": lambda f=ours: f(maps),
                          "Quantus": lambda q=quantus: q(**data)}, 5)
    return rows + speed_rows(calls)


def grey_rows(model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor) -> list[Row]:
    grey_model, grey = Grey(model).eval(), x.mean(dim=1, keepdim=True)
    with torch.no_grad():
        y = grey_model(grey).argmax(dim=1, keepdim=True)
    data = dict(model=grey_model, x_batch=grey.numpy(), y_batch=y[:, 0].numpy(),
                a_batch=maps.numpy(), device="cpu")
    rows: list[Row] = []
    # pixel flipping: Quantus's curve starts after the first step
    flip = quantus_metric("PixelFlipping", features_in_step=SIDE * SIDE // PF_STEPS,
                          normalise=False)
    ours = pixel_flipping_curve(grey_model, grey, maps, y, steps=PF_STEPS)[:, 0, 1:]
    rows.append(row(VALUES, "pixel-flipping curve vs Quantus PixelFlipping (grey)",
                    diff(ours, flip(**data)), "max |Δ|", f"{PF_STEPS} steps, each image's "
                    "minimum as the baseline, softmax", SAME))
    # faithfulness correlation: Quantus draws np.random.choice subsets; replay them
    correlation = quantus_metric("FaithfulnessCorrelation", nr_runs=FC_RUNS,
                                 subset_size=FC_SUBSET, return_aggregate=False)

    def theirs_fc() -> Any:
        np.random.seed(FC_SEED)
        return correlation(**data, softmax=True)

    np.random.seed(FC_SEED)
    runs = []
    for _ in range(FC_RUNS):  # per run: a subset per image, then Quantus's unused uniform draw
        runs.append(np.stack([np.random.choice(SIDE * SIDE, FC_SUBSET, replace=False)
                              for _ in range(BATCH)]))
        np.random.uniform(size=BATCH)
    replay = np.stack(runs, axis=1)
    theirs = theirs_fc()
    own = faithfulness_correlation(grey_model, grey, maps, y, seed=FC_SEED)[:, 0]
    fed = faithfulness_correlation(grey_model, grey, maps, y,
                                   subsets=torch.from_numpy(replay))[:, 0]
    rows += [row(VALUES, "faithfulness-correlation vs Quantus (own random subsets)",
                 diff(own, theirs), "max |Δ|", f"{FC_RUNS} subsets of {FC_SUBSET} pixels "
                 "drawn by each library: a difference of draws"),
             row(VALUES, "faithfulness-correlation explained: Quantus's subsets", diff(fed, theirs),
                 "max |Δ|", "camkit fed the np.random.choice subsets Quantus drew", SAME)]
    # ROAD: Quantus scores top-1 accuracy, MoRF only, removing floor(p·N/100) pixels
    class PerSample(quantus_metric("ROAD").__class__):  # type: ignore[misc]
        def custom_postprocess(self, **kwargs: Any) -> None:
            """Keep the (B, P) correctness instead of the mean per percentage."""

    quantus_road = PerSample(percentages=PERCENTAGES, noise=0.0, normalise=False,
                             disable_warnings=True)
    theirs_road = np.asarray(quantus_road(**data)[0])
    exact = [100 * int(SIDE * SIDE * p / 100) / (SIDE * SIDE) for p in PERCENTAGES]
    accuracy = {name: road_curve(grey_model, grey, maps, y, percentages=percentages,
                                 noise=0.0, confidence=top1_confidence)[:, 0]
                for name, percentages in (("given", PERCENTAGES), ("floor", exact))}
    rows += [row(VALUES, "road-morf accuracy vs Quantus ROAD (grey, noise 0)",
                 diff(accuracy["given"], theirs_road), "max |Δ|", "top-1 correctness at 10-90 %;"
                 " camkit removes round(p·N/100) pixels, Quantus floor(p·N/100)"),
             row(VALUES, "road-morf accuracy explained: Quantus's pixel counts",
                 diff(accuracy["floor"], theirs_road), "max |Δ|", "the same counts", SAME)]
    calls = {
        "pixel-flipping": ({"camkit": lambda: pixel_flipping_curve(grey_model, grey, maps, y,
                                                                   steps=PF_STEPS),
                            "Quantus": lambda: flip(**data),
                            "floor": forwards(grey_model, grey, PF_STEPS + 1)}, 2),
        "faithfulness-correlation": ({"camkit": lambda: faithfulness_correlation(
            grey_model, grey, maps, y, seed=FC_SEED), "Quantus": theirs_fc,
            "floor": forwards(grey_model, grey, FC_RUNS + 1)}, 2),
        "road-morf (accuracy)": ({"camkit": lambda: road_curve(
            grey_model, grey, maps, y, percentages=exact, noise=0.0,
            confidence=top1_confidence), "Quantus": lambda: quantus_road(**data),
            "floor": forwards(grey_model, grey, len(exact))}, 1),
    }
    return rows + speed_rows(calls)


def grad_cam_road(model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor, order: str,
                  percentile: int, field: Tensor | None) -> np.ndarray:
    """pytorch-grad-cam's ROAD at one percentile (noise 0 in its imputer; ``field`` added on
    the imputed pixels when given): the confidence change ``after − before``."""
    from pytorch_grad_cam.metrics.perturbation_confidence import (
        PerturbationConfidenceMetric,
        RemoveLeastRelevantFirst,
        RemoveMostRelevantFirst,
    )
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    imputer, images = NoisyLinearImputer(noise=0.0), iter(range(x.shape[0]))

    def impute(image: Tensor, keep: Tensor) -> Tensor:
        filled = imputer(image, keep)
        return filled if field is None else filled + field[next(images)] * (1 - keep)

    remove = RemoveMostRelevantFirst if order == "morf" else RemoveLeastRelevantFirst
    metric = PerturbationConfidenceMetric(remove(percentile, impute))
    classes = [ClassifierOutputSoftmaxTarget(int(c)) for c in targets[:, 0]]
    return metric(x, maps[:, 0].numpy(), classes, model)


def grad_cam_rows(model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor) -> list[Row]:
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    base = make_scorer(model)(x, targets)[:, 0]
    field = imputation_noise(x, 0.01, 0, None)
    # grad-cam's percentile p keeps p % and removes the pixels at or above np.percentile(cam, p)
    cam, n = maps[0, 0].numpy(), SIDE * SIDE
    counts = [int((cam >= np.percentile(cam, 100 - q)).sum()) for q in PERCENTAGES]
    same_counts = [100 * c / n for c in counts]
    rows: list[Row] = []

    def ours(order: str, percentages: list[float], noise: Any = 0.0) -> Tensor:
        return road_curve(model, x, maps, targets, order=order, percentages=percentages,
                          noise=noise)[:, 0] - base[:, None]

    for order in ("morf", "lerf"):
        theirs = np.stack([grad_cam_road(model, x, maps, targets, order, 100 - q, None)
                           for q in PERCENTAGES], axis=1)
        rows += [row(VALUES, f"road-{order} curve vs grad-cam (noise 0)",
                     diff(ours(order, PERCENTAGES), theirs), "max |Δ|",
                     "softmax confidence change at 10-90 % removed; grad-cam removes "
                     f"{counts} pixels of {n}, camkit round(p·N/100)"),
                 row(VALUES, f"road-{order} explained: grad-cam's pixel counts (noise 0)",
                     diff(ours(order, same_counts), theirs), "max |Δ|", "", SAME)]
    theirs_noisy = np.stack([grad_cam_road(model, x, maps, targets, "morf", 100 - q, field)
                             for q in PERCENTAGES], axis=1)
    rows.append(row(VALUES, "road-morf explained: noise 0.01, the same draws",
                    diff(ours("morf", same_counts, field), theirs_noisy), "max |Δ|",
                    "camkit's seeded noise field added to grad-cam's imputation", SAME))
    classes = [ClassifierOutputSoftmaxTarget(int(c)) for c in targets[:, 0]]
    combined = ROADCombined(percentiles=PERCENTAGES)
    ours_combined = road(model, x, maps, targets, percentages=PERCENTAGES)[:, 0]
    rows.append(row(VALUES, "road (combined) vs grad-cam ROADCombined (noise 0.01 each)",
                    diff(ours_combined, combined(x, maps[:, 0].numpy(), classes, model)),
                    "max |Δ|", "each library draws its own imputation noise"))
    calls = {"road (both orders, 9 percentages)": (
        {"camkit": lambda: road(model, x, maps, targets, percentages=PERCENTAGES),
         "grad-cam": lambda: combined(x, maps[:, 0].numpy(), classes, model),
         "floor": forwards(model, x, 2 * len(PERCENTAGES) + 1)}, 1)}
    return rows + speed_rows(calls, "grad-cam")


def quantus_explainer(maps: str) -> Callable[..., np.ndarray]:
    """Quantus's ``explain_func``: camkit's Grad-CAM on whatever model Quantus passes; raw maps
    as |map| (Quantus refuses a batch of all-negative maps, and MPRT takes |map| anyway)."""
    run = model_explainer("gradcam", LAYER, maps=maps)

    def explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: Any) -> Any:
        x, y = torch.as_tensor(inputs), torch.as_tensor(targets).view(-1, 1)
        return run(model, x, y).abs().numpy()

    return explain


def randomisation_rows(model: nn.Module, x: Tensor, targets: Tensor) -> list[Row]:
    import quantus

    raw = model_explainer("gradcam", LAYER)
    original = raw(model, x, targets)
    data = dict(model=model, x_batch=x.numpy(), y_batch=targets[:, 0].numpy(),
                a_batch=original.abs().numpy(), device="cpu",
                explain_func=quantus_explainer("raw"))
    mprt = quantus_metric("MPRT", normalise=False)
    theirs = mprt(**data)
    layers = [name for name in theirs if name != "original"]
    ours = parameter_randomisation(model, x, targets, raw, layers=layers, seed=42,
                                   similarities=("spearman-abs",)).similarity["spearman-abs"]
    theirs_matrix = np.stack([theirs[name] for name in layers], axis=1)
    generator = quantus.PyTorchModel(model, channel_first=True).get_random_layer_generator(
        order="top_down", seed=42)
    fed = np.stack([SIMILARITIES["spearman-abs"](original, raw(copy, x, targets))[:, 0].numpy()
                    for _, copy in generator], axis=1)
    rows = [row(VALUES, f"randomisation (cascading, {len(layers)} layers) vs Quantus MPRT",
                diff(ours[:, 0, 1:], theirs_matrix), "max |Δ|", "Spearman ρ of |map| per layer;"
                " different random weights (Quantus re-seeds every layer with seed + 1)"),
            row(VALUES, "randomisation explained: Quantus's randomised models", diff(
                fed, theirs_matrix), "max |Δ|", "camkit's similarity of camkit's maps on the "
                "models Quantus's generator yields", SAME)]
    # random logit: Quantus draws y_off with np.random.seed(42) and SSIM on flattened maps
    shown = model_explainer("gradcam", LAYER, maps="normalised")
    maps = shown(model, x, targets)
    logit = quantus_metric("RandomLogit", num_classes=CLASSES, seed=42, normalise=False)
    logit_data = {**data, "a_batch": maps.numpy(), "explain_func": quantus_explainer("normalised")}
    theirs_logit = np.asarray(logit(**logit_data))
    np.random.seed(42)
    index = np.random.randint(0, CLASSES - 1, BATCH)
    others = np.array([[c for c in range(CLASSES) if c != t][i]
                       for t, i in zip(targets[:, 0].tolist(), index, strict=True)])
    explainer = method_explainer(model, "gradcam", LAYER)
    other_maps = explainer(x, torch.from_numpy(others).view(-1, 1))
    flat = ssim(maps.reshape(BATCH, 1, 1, -1), other_maps.reshape(BATCH, 1, 1, -1), (1, 7))
    ours_logit = random_logit(explainer, x, maps, targets, n_classes=CLASSES, seed=42)[:, 0]
    rows += [row(VALUES, "random-logit vs Quantus RandomLogit", diff(ours_logit, theirs_logit),
                 "max |Δ|", "camkit: its own other classes and 2-D SSIM (7 × 7); Quantus: SSIM "
                 "of the flattened maps (a 1-D window of 7)"),
             row(VALUES, "random-logit explained: Quantus's classes and 1-D SSIM",
                 diff(flat[:, 0], theirs_logit), "max |Δ|", "camkit's SSIM with a 1 × 7 window "
                 "on the flattened maps, pair data range", SAME)]
    calls = {
        f"randomisation ({len(layers)} layers)": ({"camkit": lambda: parameter_randomisation(
            model, x, targets, raw, layers=layers, similarities=("spearman-abs",)),
            "Quantus": lambda: mprt(**data)}, 1),
        "random-logit": ({"camkit": lambda: random_logit(explainer, x, maps, targets,
                                                         n_classes=CLASSES),
                          "Quantus": lambda: logit(**logit_data)}, 2),
    }
    return rows + speed_rows(calls)


def speed_rows(calls: dict[str, tuple[dict[str, Callable[[], object]], int]],
               peer: str = "Quantus") -> list[Row]:
    rows = []
    for name, (fns, repeats) in calls.items():
        times = interleaved_samples(fns, 0, repeats)
        ours, theirs = (float(np.median(times[k])) for k in ("camkit", peer))
        ratio = float(np.median([b / a for a, b in zip(times["camkit"], times[peer],
                                                       strict=True)]))
        note = f"{ours:.3g} s vs {theirs:.3g} s for {BATCH} images"
        if "floor" in times:
            floor = float(np.median([a / f for a, f in zip(times["camkit"], times["floor"],
                                                           strict=True)]))
            note += (f"; camkit takes {floor:.2f} × the plain no-grad forward passes the "
                     "metric needs (the whole batch at once), the floor for any library")
        rows.append(row(SPEED, f"{name}: {peer} / camkit", ratio, "× faster", note, FASTER))
    return rows


def forwards(model: nn.Module, x: Tensor, n: int) -> Callable[[], None]:
    """``n`` plain no-grad forward passes of the batch ``x``: the model evaluations a metric
    that scores ``n`` perturbed versions of every image cannot avoid."""
    def run() -> None:
        with torch.no_grad():
            for _ in range(n):
                model(x)
    return run


def run() -> list[Row]:
    setup(0)
    model, x, maps, targets = case()
    rows: list[Row] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows += complexity_rows(x, maps, targets, model)
        rows += grey_rows(model, x, maps, targets)
        rows += grad_cam_rows(model, x, maps, targets)
        rows += randomisation_rows(model, x, targets)
    return sorted(rows, key=lambda r: r["group"])
