"""Faithfulness correlation (Bhatt, Weller, Moura, Evaluating and Aggregating Feature-based
Model Explanations, IJCAI 2020, §4.2, eq. 3).

``μ_F = corr_{S ⊂ pixels, |S| = m} (Σ_{i ∈ S} Φ_i, f(x) − f(x_{[x_S = x̄_S]}))``: over random
subsets ``S`` of ``m`` pixels, the Pearson correlation between the map's total on ``S`` and the
drop of the target's confidence when the pixels of ``S`` (all channels) are replaced by a
baseline ``x̄``. A map that measures each pixel's effect correlates at 1. Higher is better.

Defaults are Quantus's ``FaithfulnessCorrelation``: 100 subsets of 224 pixels, replaced by each
image's smallest value. The subsets of an image are drawn from a generator seeded by ``(seed,
key)`` (its index in the data set, as for :class:`~camkit.metrics.robustness.Noise`), so every
method of a run meets the same subsets and the score drops are shared between methods.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..capture.batches import DEFAULT_MAX_BATCH_MEMORY, BatchSize
from .faithfulness import Baseline, baseline_image
from .robustness import Keys, mixed_seed
from .scoring import METRIC_BATCH_SIZE, Confidence, check_inputs, make_scorer
from .similarity import pearson

SUBSET_RUNS, SUBSET_SIZE = 100, 224  # Quantus's nr_runs and subset_size


def random_subsets(x: Tensor, n_runs: int = SUBSET_RUNS, subset_size: int = SUBSET_SIZE,
                   seed: int = 0, keys: Keys = None) -> Tensor:
    """``(B, n_runs, subset_size)`` long: for each image, ``n_runs`` subsets of distinct pixel
    indices (row-major in ``H·W``), each uniformly drawn without replacement; image ``b``'s
    from a generator seeded by ``(seed, keys[b])`` (``keys`` default ``0..B−1``)."""
    n_pixels = x.shape[-2] * x.shape[-1]
    if not 1 <= subset_size <= n_pixels:
        raise ValueError(f"subset_size must be in [1, {n_pixels}] (the pixels of an image), "
                         f"got {subset_size}")
    if n_runs < 2:
        raise ValueError(f"a correlation needs n_runs >= 2, got {n_runs}")
    keys = list(range(x.shape[0])) if keys is None else [int(k) for k in keys]
    if len(keys) != x.shape[0]:
        raise ValueError(f"got {len(keys)} subset keys for {x.shape[0]} images")
    out = torch.empty(x.shape[0], n_runs, subset_size, dtype=torch.long, device=x.device)
    for b, key in enumerate(keys):  # one small generator per image, as Noise.sample
        generator = torch.Generator(device=x.device).manual_seed(mixed_seed(seed, key))
        scores = torch.rand(n_runs, n_pixels, generator=generator, device=x.device)
        out[b] = scores.topk(subset_size, dim=1).indices
    return out


def subset_drops(
    model: nn.Module, x: Tensor, subsets: Tensor, targets: Tensor, *,
    baseline: Baseline = "black", confidence: str | Confidence | None = "softmax",
    batch_size: BatchSize = METRIC_BATCH_SIZE, max_batch_memory: float = DEFAULT_MAX_BATCH_MEMORY,
    base: Tensor | None = None,
) -> Tensor:
    """``f(x) − f(x_{[x_S = x̄_S]})`` ``(B, n, K)`` for ``subsets`` ``(B, n, m)`` of pixel
    indices and every target ``(B, K)``; ``base`` = ``f(x)`` ``(B, K)`` when already known.
    One forward per perturbed image serves all K targets."""
    if subsets.dim() != 3 or subsets.shape[0] != x.shape[0]:
        raise ValueError(f"subsets must be (B, n, m) pixel indices for {x.shape[0]} images, "
                         f"got {tuple(subsets.shape)}")
    scorer = make_scorer(model, confidence, batch_size, max_batch_memory)
    n, size = subsets.shape[1], x.shape[-2:]
    flat, fill = subsets.flatten(0, 1), baseline_image(x, baseline)

    def make(index: Tensor) -> Tensor:
        b = index // n
        chosen = torch.zeros(len(index), size[0] * size[1], dtype=torch.bool, device=x.device)
        chosen.scatter_(1, flat[index], True)
        return fill[b].where(chosen.view(-1, 1, *size), x[b])

    classes = targets.repeat_interleave(n, dim=0)
    perturbed = scorer.rows(classes.shape[0], make, classes, x).view(x.shape[0], n, -1)
    base = scorer(x, targets) if base is None else base
    return base.unsqueeze(1) - perturbed


def subset_attributions(maps: Tensor, subsets: Tensor) -> Tensor:
    """``Σ_{i ∈ S} Φ_i`` for every subset and map: ``maps`` ``(B, K, H, W)``, ``subsets``
    ``(B, n, m)`` → ``(B, n, K)``."""
    b, k = maps.shape[:2]
    n, m = subsets.shape[1:]
    flat = maps.flatten(2).unsqueeze(1).expand(b, n, k, -1)
    picked = flat.gather(3, subsets.unsqueeze(2).expand(b, n, k, m))
    return picked.sum(dim=3, dtype=torch.promote_types(maps.dtype, torch.float32))


def correlation_from(attributions: Tensor, drops: Tensor) -> Tensor:
    """Faithfulness correlation (eq. 3): the Pearson correlation over the ``n`` subsets,
    ``(B, n, K)`` twice → ``(B, K)``; NaN where either side does not vary."""
    return pearson(attributions.transpose(1, 2), drops.transpose(1, 2))


def faithfulness_correlation(
    model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor, *, n_runs: int = SUBSET_RUNS,
    subset_size: int = SUBSET_SIZE, baseline: Baseline = "black", seed: int = 0,
    keys: Keys = None, subsets: Tensor | None = None,
    confidence: str | Confidence | None = "softmax", batch_size: BatchSize = METRIC_BATCH_SIZE,
    max_batch_memory: float = DEFAULT_MAX_BATCH_MEMORY, base: Tensor | None = None,
) -> Tensor:
    """Faithfulness correlation per sample ``(B, K)``, higher is better: ``subsets`` ``(B, n,
    m)`` of pixel indices, or ``n_runs`` seeded :func:`random_subsets` of ``subset_size``
    pixels; :func:`subset_drops`, :func:`subset_attributions`, :func:`correlation_from`."""
    check_inputs(x, maps, targets)
    if subsets is None:
        subsets = random_subsets(x, n_runs, subset_size, seed, keys)
    drops = subset_drops(model, x, subsets, targets, baseline=baseline, confidence=confidence,
                         batch_size=batch_size, max_batch_memory=max_batch_memory, base=base)
    return correlation_from(subset_attributions(maps, subsets), drops)
