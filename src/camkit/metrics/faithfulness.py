"""Faithfulness: does the model still believe its class on what the map keeps?

- Average Drop % and % Increase in Confidence (Chattopadhay et al., Grad-CAM++, WACV 2018;
  ALGORITHMS §4.1-4.2): the confidence ``Y`` on the image against the confidence ``O`` on
  the explanation-masked image ``E ⊙ I``.
- Deletion and insertion AUC (Petsiuk et al., RISE, BMVC 2018): the confidence while
  the most salient pixels are removed (deletion, lower is better) or put back onto a blurred
  image (insertion, higher is better), summarised by the area under that curve.
- Pixel flipping (Bach et al., On Pixel-Wise Explanations for Non-Linear Classifier Decisions
  by Layer-Wise Relevance Propagation, PLoS ONE 2015, §"Pixel-flipping"): the same curve as
  deletion, the pixels set to each image's smallest value (Quantus's "black" baseline) in
  equal steps.

Shapes: ``x`` ``(B, C, H, W)``; ``maps`` ``(B, K, H, W)`` in [0, 1] at the input resolution
(``expl[method]``); ``targets`` ``(B, K)`` class indices; results are per-sample ``(B, K)``.
Masking acts on ``x`` as given (the normalised input tensor by default, as pytorch-grad-cam
and torch-cam do; ALGORITHMS §4.1 choice 2).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

from ..capture.batches import DEFAULT_MAX_BATCH_MEMORY, BatchSize
from .scoring import METRIC_BATCH_SIZE, Confidence, ConfidenceScorer, check_inputs, make_scorer

MIN_CONFIDENCE = 1e-3  # Average Drop is undefined (NaN) below this base confidence (§4.1.3)
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0  # RISE's insertion baseline: gaussian_blur2d(klen=11, nsig=5)
Baseline = str | float | Tensor


def masked_confidence(
    model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor, *,
    confidence: str | Confidence | None = "softmax", batch_size: BatchSize = METRIC_BATCH_SIZE,
    max_batch_memory: float = DEFAULT_MAX_BATCH_MEMORY,
) -> Tensor:
    """``O`` ``(B, K)``: the confidence of class ``targets[b, k]`` on ``x[b] ⊙ maps[b, k]``
    (the map broadcast over the colour channels), ``B·K`` images in chunks."""
    return _masked(make_scorer(model, confidence, batch_size, max_batch_memory), x, maps, targets)


def _masked(scorer: ConfidenceScorer, x: Tensor, maps: Tensor, targets: Tensor) -> Tensor:
    check_inputs(x, maps, targets)
    k = maps.shape[1]

    def make(index: Tensor) -> Tensor:
        return x[index // k] * maps[index // k, index % k].unsqueeze(1).to(x.dtype)

    return scorer.rows(targets.numel(), make, targets.reshape(-1, 1), x).view_as(targets)


def base_and_masked(
    model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor, *,
    confidence: str | Confidence | None = "softmax", batch_size: BatchSize = METRIC_BATCH_SIZE,
    max_batch_memory: float = DEFAULT_MAX_BATCH_MEMORY, base: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``Y`` and ``O``, both ``(B, K)``: the confidences on ``x`` (``base`` when given) and on
    the masked images (:func:`masked_confidence`), scored in the same chunks."""
    scorer = make_scorer(model, confidence, batch_size, max_batch_memory)
    masked = _masked(scorer, x, maps, targets)
    if base is None:
        return scorer(x, targets), masked
    if base.shape != targets.shape:
        raise ValueError(f"base confidences {tuple(base.shape)} must be (B, K) = "
                         f"{tuple(targets.shape)}")
    return base, masked


def drop_percent(base: Tensor, masked: Tensor) -> Tensor:
    """Average Drop's per-sample term ``100 · max(0, Y − O) / Y`` (Grad-CAM++; the metric
    is its mean). ``(B, K)`` → ``(B, K)``; NaN where ``Y < 1e-3`` (ALGORITHMS §4.1.3:
    a drop relative to almost nothing is undefined)."""
    drop = 100 * (base - masked).clamp(min=0) / base
    return drop.where(base >= MIN_CONFIDENCE, drop.new_tensor(float("nan")))


def increase_percent(base: Tensor, masked: Tensor) -> Tensor:
    """% Increase in Confidence's per-sample term ``100 · 1[Y < O]`` (Grad-CAM++; §4.2);
    ``(B, K)`` → ``(B, K)`` of 0 or 100, so the mean is the percentage."""
    return 100 * (base < masked).float()


def average_drop(model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor,
                 **options: Any) -> Tensor:
    """Average Drop % per sample ``(B, K)`` (lower is better): :func:`drop_percent` of the
    confidence on ``x`` and on the masked image (keywords: :func:`base_and_masked`)."""
    return drop_percent(*base_and_masked(model, x, maps, targets, **options))


def increase_in_confidence(model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor,
                           **options: Any) -> Tensor:
    """% Increase in Confidence per sample ``(B, K)`` (higher is better):
    :func:`increase_percent` of the confidence on ``x`` and on the masked image (keywords:
    :func:`base_and_masked`)."""
    return increase_percent(*base_and_masked(model, x, maps, targets, **options))


def saliency_ranks(maps: Tensor) -> Tensor:
    """``(B, K, H, W)`` → ``(B, K, H·W)`` long: each pixel's rank, 0 for the most salient;
    equal values are ranked in row-major pixel order."""
    order = maps.flatten(2).argsort(dim=2, descending=True, stable=True)
    ranks = order.new_empty(order.shape)
    positions = order.new_tensor(range(order.shape[2])).expand_as(order)
    return ranks.scatter_(2, order, positions)


def step_counts(n_pixels: int, steps: int) -> list[int]:
    """Pixels changed after step ``s = 0..steps``: ``round(s · n_pixels / steps)`` (half up)."""
    return [(2 * s * n_pixels + steps) // (2 * steps) for s in range(steps + 1)]


def baseline_image(x: Tensor, baseline: Baseline) -> Tensor:
    """The image pixels are replaced by: ``"zero"``, ``"black"`` (each image's smallest
    value, Quantus's "black"), ``"blur"`` (RISE's Gaussian blur, kernel 11, σ = 5, smaller on
    tiny images), a constant, or a tensor broadcastable to ``x`` ``(B, C, H, W)``."""
    if isinstance(baseline, Tensor):
        return baseline.to(x.device, x.dtype).expand_as(x)
    if baseline == "zero":
        return x.new_zeros(x.shape)
    if baseline == "black":
        return x.amin(dim=(1, 2, 3), keepdim=True).expand_as(x)
    if baseline == "blur":
        side = min(BLUR_KERNEL, 2 * ((min(x.shape[-2:]) - 1) // 2) + 1)
        return gaussian_blur(x, [side, side], [BLUR_SIGMA, BLUR_SIGMA])
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return x.new_full(x.shape, float(baseline))
    raise ValueError(f"baseline must be 'zero', 'black', 'blur', a number or a tensor, got "
                     f"{baseline!r}")


def perturbation_curve(
    model: nn.Module, start: Tensor, end: Tensor, maps: Tensor, targets: Tensor, *,
    steps: int = 16, confidence: str | Confidence | None = "softmax",
    batch_size: BatchSize = METRIC_BATCH_SIZE, max_batch_memory: float = DEFAULT_MAX_BATCH_MEMORY,
) -> Tensor:
    """``(B, K, steps + 1)`` confidences of ``targets`` while the pixels of ``start`` are
    replaced by those of ``end`` (both ``(B, C, H, W)``), most salient first, ``step_counts``
    pixels after each step (Petsiuk et al. 2018). Built chunk by chunk (``batch_size`` images,
    or as many as fit in ``max_batch_memory`` bytes); only one chunk exists at once."""
    check_inputs(start, maps, targets)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    k, per_map = maps.shape[1], steps + 1
    ranks = saliency_ranks(maps)
    counts = ranks.new_tensor(step_counts(ranks.shape[2], steps))

    def make(index: Tensor) -> Tensor:
        b, j, s = index // (k * per_map), (index // per_map) % k, index % per_map
        changed = (ranks[b, j] < counts[s].unsqueeze(1)).view(-1, 1, *maps.shape[-2:])
        return end[b].where(changed, start[b])

    classes = targets.reshape(-1, 1).repeat_interleave(per_map, dim=0)
    scorer = make_scorer(model, confidence, batch_size, max_batch_memory)
    return scorer.rows(classes.shape[0], make, classes, start).view(*targets.shape, per_map)


def auc(curves: Tensor) -> Tensor:
    """Area under curves sampled at ``S + 1`` equally spaced points of [0, 1], by the
    trapezoid rule: ``Σ_s (c_s + c_{s+1}) / (2S)``; ``(..., S + 1)`` → ``(...)``."""
    steps = curves.shape[-1] - 1
    if steps < 1:
        raise ValueError("a curve needs at least 2 points")
    return (curves[..., :-1] + curves[..., 1:]).sum(dim=-1) / (2 * steps)


def deletion_curve(
    model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor, *, steps: int = 16,
    baseline: Baseline = "zero", confidence: str | Confidence | None = "softmax",
    batch_size: BatchSize = METRIC_BATCH_SIZE, max_batch_memory: float = DEFAULT_MAX_BATCH_MEMORY,
) -> Tensor:
    """``(B, K, steps + 1)``: confidence as the most salient pixels are set to ``baseline``
    (RISE deletes to zero)."""
    return perturbation_curve(model, x, baseline_image(x, baseline), maps, targets,
                              steps=steps, confidence=confidence, batch_size=batch_size,
                              max_batch_memory=max_batch_memory)


def insertion_curve(
    model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor, *, steps: int = 16,
    baseline: Baseline = "blur", confidence: str | Confidence | None = "softmax",
    batch_size: BatchSize = METRIC_BATCH_SIZE, max_batch_memory: float = DEFAULT_MAX_BATCH_MEMORY,
) -> Tensor:
    """``(B, K, steps + 1)``: confidence as the most salient pixels of ``x`` are put onto
    ``baseline`` (RISE starts from a blurred copy)."""
    return perturbation_curve(model, baseline_image(x, baseline), x, maps, targets,
                              steps=steps, confidence=confidence, batch_size=batch_size,
                              max_batch_memory=max_batch_memory)


def deletion_auc(model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor,
                 **kwargs: Any) -> Tensor:
    """Deletion AUC per sample ``(B, K)``, lower is better (keywords: :func:`deletion_curve`)."""
    return auc(deletion_curve(model, x, maps, targets, **kwargs))


def insertion_auc(model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor,
                  **kwargs: Any) -> Tensor:
    """Insertion AUC per sample ``(B, K)``, higher is better (keywords:
    :func:`insertion_curve`)."""
    return auc(insertion_curve(model, x, maps, targets, **kwargs))


def pixel_flipping_curve(
    model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor, *, steps: int = 64,
    baseline: Baseline = "black", confidence: str | Confidence | None = "softmax",
    batch_size: BatchSize = METRIC_BATCH_SIZE, max_batch_memory: float = DEFAULT_MAX_BATCH_MEMORY,
) -> Tensor:
    """``(B, K, steps + 1)``: confidence as the most salient pixels are flipped to
    ``baseline``, ``H·W / steps`` pixels per step (Bach et al. 2015; point 0 is ``x``)."""
    return perturbation_curve(model, x, baseline_image(x, baseline), maps, targets,
                              steps=steps, confidence=confidence, batch_size=batch_size,
                              max_batch_memory=max_batch_memory)


def pixel_flipping(model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor,
                   **kwargs: Any) -> Tensor:
    """Pixel-flipping AUC per sample ``(B, K)``, lower is better (keywords:
    :func:`pixel_flipping_curve`)."""
    return auc(pixel_flipping_curve(model, x, maps, targets, **kwargs))
