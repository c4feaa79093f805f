"""ROAD: RemOve And Debias (Rong, Leemann, Borisov, Kasneci, Kasneci, A Consistent and
Efficient Evaluation Strategy for Attribution Methods, ICML 2022).

Deletion metrics replace pixels by a constant, and the model then reads the shape of the
removed region instead of missing information (the "class information leakage" of §3).
ROAD replaces the removed pixels by a noisy linear imputation (§4.2): each takes the weighted
mean of its eight neighbours (:func:`~camkit.metrics.imputation.linear_imputation`), plus
Gaussian noise of standard deviation 0.01, so that the imputed values carry no trace of the
removal mask. It is run in two orders at several percentages ``p`` of the pixels:

- MoRF (most relevant first): the ``p`` % most salient pixels are imputed; a faithful map makes
  the confidence fall fast, so the mean over percentages is lower for better maps;
- LeRF (least relevant first): the ``p`` % least salient pixels are imputed; the confidence
  should stay, so higher is better.

The summary per sample is the mean of the curve over the percentages (an area under the curve
for evenly spaced percentages), and the combined score ``(LeRF − MoRF) / 2`` averaged over the
percentages, as pytorch-grad-cam's ``ROADCombined`` (higher is better). The paper reports the
model's accuracy on the imputed images; per sample that is ``confidence=`` a top-1 indicator
(:func:`top1_confidence`), which is what Quantus's ``ROAD`` scores.

Shapes: ``x`` ``(B, C, H, W)``, ``maps`` ``(B, K, H, W)``, ``targets`` ``(B, K)``; a curve is
``(B, K, P)`` for ``P`` percentages. The imputed images are built chunk by chunk inside the
metrics' re-scoring (:class:`~camkit.metrics.scoring.ConfidenceScorer`): one chunk of
``batch_size`` imputed images exists at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from ..capture.batches import DEFAULT_MAX_BATCH_MEMORY, BatchSize
from .faithfulness import saliency_ranks
from .imputation import TOLERANCE, linear_imputation
from .robustness import Keys, Noise
from .scoring import METRIC_BATCH_SIZE, Confidence, check_inputs, make_scorer

ROAD_PERCENTAGES = (10, 20, 30, 40, 50, 60, 70, 80, 90)  # pytorch-grad-cam's default
ROAD_NOISE = 0.01  # the paper's standard deviation of the imputation noise
ORDERS = ("morf", "lerf")


def top1_confidence(logits: Tensor) -> Tensor:
    """1 for the top-1 class and 0 for the others, ``(n, n_classes)`` → ``(n, n_classes)``:
    ROAD's accuracy per sample (Rong et al. 2022 report the accuracy on the imputed set)."""
    return F.one_hot(logits.argmax(dim=1), logits.shape[1]).to(logits.dtype)


def removal_counts(n_pixels: int, percentages: Sequence[float]) -> list[int]:
    """Pixels removed at each percentage: ``round(p · n / 100)``, halves rounded up."""
    for p in percentages:
        if not 0 <= p <= 100:
            raise ValueError(f"ROAD percentages must lie in [0, 100], got {p}")
    return [int(p * n_pixels / 100 + 0.5) for p in percentages]


def removal_masks(ranks: Tensor, counts: Tensor, order: str) -> Tensor:
    """Which pixels are removed: ``ranks`` ``(m, N)`` (0 = most salient, from
    :func:`~camkit.metrics.faithfulness.saliency_ranks`) and ``counts`` ``(m,)`` → ``(m, N)``
    bool: the ``counts`` most salient pixels for ``"morf"``, the least salient for ``"lerf"``."""
    if order == "morf":
        return ranks < counts.unsqueeze(1)
    if order == "lerf":
        return ranks >= ranks.shape[1] - counts.unsqueeze(1)
    raise ValueError(f"ROAD order must be one of {ORDERS}, got {order!r}")


def imputation_noise(x: Tensor, noise: float | Tensor, seed: int, keys: Keys) -> Tensor | None:
    """The noise added to imputed pixels, ``(B, C, H, W)`` or ``None`` for none: a tensor is
    used as given; a standard deviation draws one Gaussian field per image, seeded by ``(seed,
    keys[b])`` (:class:`~camkit.metrics.robustness.Noise`), shared by every map, percentage and
    order of that image (so the two orders and all methods meet the same noise)."""
    if isinstance(noise, Tensor):
        if noise.shape != x.shape:
            raise ValueError(f"a noise tensor must have x's shape {tuple(x.shape)}, got "
                             f"{tuple(noise.shape)}")
        return noise.to(x.device, x.dtype)
    if noise < 0:
        raise ValueError(f"ROAD noise must be >= 0, got {noise}")
    return None if noise == 0 else Noise("gaussian", noise, seed).sample(x, 1, keys)[:, 0]


def road_curve(
    model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor, *, order: str = "morf",
    percentages: Sequence[float] = ROAD_PERCENTAGES, noise: float | Tensor = ROAD_NOISE,
    seed: int = 0, keys: Keys = None, confidence: str | Confidence | None = "softmax",
    batch_size: BatchSize = METRIC_BATCH_SIZE, max_batch_memory: float = DEFAULT_MAX_BATCH_MEMORY,
    tol: float = TOLERANCE,
) -> Tensor:
    """``(B, K, P)``: the confidence of ``targets`` on ``x`` with the ``p`` % most (``"morf"``)
    or least (``"lerf"``) salient pixels of each map replaced by their noisy linear imputation,
    for each ``p`` of ``percentages``. Ties in a map are ranked in row-major pixel order."""
    check_inputs(x, maps, targets)
    if order not in ORDERS:
        raise ValueError(f"ROAD order must be one of {ORDERS}, got {order!r}")
    k, per_map = maps.shape[1], len(percentages)
    if per_map == 0:
        raise ValueError("ROAD needs at least one percentage")
    ranks = saliency_ranks(maps)
    counts = ranks.new_tensor(removal_counts(ranks.shape[2], percentages))
    field = imputation_noise(x, noise, seed, keys)

    def make(index: Tensor) -> Tensor:
        b, j, s = index // (k * per_map), (index // per_map) % k, index % per_map
        removed = removal_masks(ranks[b, j], counts[s], order).view(-1, 1, *x.shape[-2:])
        filled = linear_imputation(x[b], removed, tol)
        return filled if field is None else filled + field[b] * removed

    classes = targets.reshape(-1, 1).repeat_interleave(per_map, dim=0)
    scorer = make_scorer(model, confidence, batch_size, max_batch_memory)
    return scorer.rows(classes.shape[0], make, classes, x).view(*targets.shape, per_map)


def curve_mean(curves: Tensor) -> Tensor:
    """The summary of a ROAD curve: its mean over the percentages, ``(..., P)`` → ``(...)``
    (the area under the curve when the percentages are evenly spaced)."""
    return curves.mean(dim=-1)


def road_combined(morf: Tensor, lerf: Tensor) -> Tensor:
    """``mean_p (LeRF_p − MoRF_p) / 2``, ``(..., P)`` twice → ``(...)``: pytorch-grad-cam's
    ``ROADCombined`` (the confidence on ``x`` cancels); higher is better."""
    return (lerf - morf).mean(dim=-1) / 2


def road(model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor, **options: Any) -> Tensor:
    """The combined ROAD score per sample ``(B, K)``, higher is better: :func:`road_combined`
    of the MoRF and LeRF curves (keywords: :func:`road_curve`, except ``order``)."""
    if "order" in options:
        raise TypeError("road() runs both orders; use road_curve(order=...) for one")
    morf = road_curve(model, x, maps, targets, order="morf", **options)
    lerf = road_curve(model, x, maps, targets, order="lerf", **options)
    return road_combined(morf, lerf)


def road_morf(model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor,
              **options: Any) -> Tensor:
    """MoRF summary per sample ``(B, K)``, lower is better (keywords: :func:`road_curve`)."""
    return curve_mean(road_curve(model, x, maps, targets, order="morf", **options))


def road_lerf(model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor,
              **options: Any) -> Tensor:
    """LeRF summary per sample ``(B, K)``, higher is better (keywords: :func:`road_curve`)."""
    return curve_mean(road_curve(model, x, maps, targets, order="lerf", **options))

