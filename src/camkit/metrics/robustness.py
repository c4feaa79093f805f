"""Robustness: Infidelity and max-Sensitivity (Yeh et al., On the (In)fidelity and
Sensitivity of Explanations, NeurIPS 2019; ALGORITHMS §4.3-4.4).

- Infidelity: ``E_I[(Iᵀ Φ(x) − (f(x) − f(x − I)))²]``, the map ``Φ`` broadcast over
  the colour channels, ``f`` the target's confidence, ``I`` seeded random noise
  (default ``N(0, 0.2²)`` on the normalised input, 10 draws). Lower is better.
- max-Sensitivity: ``max_{‖y − x‖∞ ≤ r} ‖Φ(y) − Φ(x)‖``: the explainer re-run on
  perturbed copies (default uniform in ``[−0.02, 0.02]``, 10 draws), Frobenius norm of the
  map difference; relative to ``‖Φ(x)‖`` by default, as ``captum.metrics.sensitivity_max``.
  Lower is better.

Noise is drawn per image from a generator seeded by ``(seed, key)``, ``key`` being the
image's index in its data set, so values do not depend on how images are batched, and every
method meets the same perturbations. Both metrics give the same values as ``captum.metrics``
on the same perturbations (tests/test_metrics_robustness.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..api import explain
from ..capture.batches import DEFAULT_MAX_BATCH_MEMORY, BatchSize, forward_bytes, run_items
from ..capture.layers import LayerSpec
from .scoring import METRIC_BATCH_SIZE, Confidence, check_inputs, make_scorer, metric_batching

Explainer = Callable[[Tensor, Tensor], Tensor]  # (images (m, C, H, W), targets (m, K)) -> maps
NOISE_KINDS = ("gaussian", "uniform")
Keys = Sequence[int] | Tensor | None


def mixed_seed(seed: int, key: int) -> int:
    """A 63-bit generator seed derived from ``(seed, key)`` (NumPy's SeedSequence)."""
    if seed < 0 or key < 0:
        raise ValueError(f"seeds and keys must be >= 0, got seed={seed}, key={key}")
    return int(np.random.SeedSequence([seed, key]).generate_state(1, np.uint64)[0] >> 1)


@dataclass(frozen=True)
class Noise:
    """Seeded input noise: ``"gaussian"`` with standard deviation ``scale`` or ``"uniform"``
    in ``[−scale, scale]`` (the L∞ ball of radius ``scale``)."""

    kind: str
    scale: float
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in NOISE_KINDS:
            raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {self.kind!r}")
        if not self.scale > 0:
            raise ValueError(f"noise scale must be > 0, got {self.scale}")

    def sample(self, x: Tensor, n: int, keys: Keys = None) -> Tensor:
        """``(B, n, *x.shape[1:])`` draws; image ``b``'s come from a generator seeded by
        ``(seed, keys[b])`` (``keys`` default ``0..B−1``)."""
        keys = list(range(x.shape[0])) if keys is None else [int(k) for k in keys]
        if len(keys) != x.shape[0]:
            raise ValueError(f"got {len(keys)} noise keys for {x.shape[0]} images")
        dtype = x.dtype if x.is_floating_point() else torch.float32
        out = torch.empty(x.shape[0], n, *x.shape[1:], device=x.device, dtype=dtype)
        for b, key in enumerate(keys):  # one small generator per image, not a hot loop
            generator = torch.Generator(device=x.device).manual_seed(mixed_seed(self.seed, key))
            if self.kind == "gaussian":
                out[b].normal_(0.0, self.scale, generator=generator)
            else:
                out[b].uniform_(-self.scale, self.scale, generator=generator)
        return out


def attribution_dots(noise_sums: Tensor, maps: Tensor) -> Tensor:
    """``Iᵀ Φ`` for every draw and map: with ``Φ`` the map repeated over the C channels this is
    ``Σ_hw (Σ_c I) Φ``. ``noise_sums`` ``(B, n, H, W)`` (noise summed over channels), ``maps``
    ``(B, K, H, W)`` → ``(B, n, K)``."""
    dtype = torch.promote_types(torch.promote_types(noise_sums.dtype, maps.dtype), torch.float32)
    return torch.einsum("bnhw,bkhw->bnk", noise_sums.to(dtype), maps.to(dtype))


def score_drops(
    model: nn.Module, x: Tensor, noise: Tensor, targets: Tensor, *,
    confidence: str | Confidence | None = "softmax",
    batch_size: BatchSize = METRIC_BATCH_SIZE, max_batch_memory: float = DEFAULT_MAX_BATCH_MEMORY,
    base: Tensor | None = None,
) -> Tensor:
    """``f(x) − f(x − I)`` ``(B, n, K)`` for ``noise`` ``I`` ``(B, n, C, H, W)`` and every
    target; ``base`` = ``f(x)`` ``(B, K)`` when already known. One forward per perturbed
    image serves all K targets."""
    scorer = make_scorer(model, confidence, batch_size, max_batch_memory)
    n = noise.shape[1]
    flat = noise.flatten(0, 1)

    def make(index: Tensor) -> Tensor:
        return x[index // n] - flat[index]

    classes = targets.repeat_interleave(n, dim=0)
    perturbed = scorer.rows(classes.shape[0], make, classes, x).view(x.shape[0], n, -1)
    base = scorer(x, targets) if base is None else base
    return base.unsqueeze(1) - perturbed


def infidelity_from(dots: Tensor, drops: Tensor, normalize: bool = False) -> Tensor:
    """Infidelity (Yeh et al. 2019; ALGORITHMS §4.3) as the mean over draws of ``(β Iᵀ Φ − Δf)²``:
    ``dots`` and ``drops`` ``(B, n, K)`` → ``(B, K)``. ``β = 1``, or with ``normalize`` the
    least-squares scale ``β = Σ Iᵀ Φ Δf / Σ (Iᵀ Φ)²`` (0 when every ``Iᵀ Φ`` is 0), as
    Captum's ``normalize=True``: the value then ignores the map's overall scale."""
    if normalize:
        energy = dots.pow(2).sum(dim=1, keepdim=True)
        beta = (dots * drops).sum(dim=1, keepdim=True) / energy.where(energy != 0, 1.0)
        dots = beta * dots
    return (dots - drops).pow(2).mean(dim=1)


def infidelity(
    model: nn.Module, x: Tensor, maps: Tensor, targets: Tensor, *,
    noise: Noise = Noise("gaussian", 0.2), n_samples: int = 10, normalize: bool = False,
    keys: Keys = None, confidence: str | Confidence | None = "softmax",
    batch_size: BatchSize = METRIC_BATCH_SIZE, max_batch_memory: float = DEFAULT_MAX_BATCH_MEMORY,
    base: Tensor | None = None,
) -> Tensor:
    """Infidelity per sample ``(B, K)``, lower is better: ``n_samples`` draws of ``noise`` per
    image (seeded by ``keys``, see :class:`Noise`), :func:`score_drops`,
    :func:`attribution_dots`, :func:`infidelity_from`."""
    check_inputs(x, maps, targets)
    draws = noise.sample(x, n_samples, keys)
    drops = score_drops(model, x, draws, targets, confidence=confidence, batch_size=batch_size,
                        max_batch_memory=max_batch_memory, base=base)
    return infidelity_from(attribution_dots(draws.sum(dim=2), maps), drops, normalize)


def map_distances(reference: Tensor, perturbed: Tensor, relative: bool = True) -> Tensor:
    """``‖Φ(y) − Φ(x)‖_F`` per map, ``(m, K, H, W)`` twice → ``(m, K)``; with ``relative``
    divided by ``‖Φ(x)‖_F`` (by 1 where that is 0), as ``captum.metrics.sensitivity_max``."""
    distance = (perturbed - reference).flatten(2).norm(dim=2)
    if not relative:
        return distance
    size = reference.flatten(2).norm(dim=2)
    return distance / size.where(size != 0, 1.0)


def max_sensitivity(
    explainer: Explainer, x: Tensor, maps: Tensor, targets: Tensor, *,
    noise: Noise = Noise("uniform", 0.02), n_samples: int = 10, relative: bool = True,
    keys: Keys = None, batch_size: BatchSize = METRIC_BATCH_SIZE,
    max_batch_memory: float = DEFAULT_MAX_BATCH_MEMORY,
) -> Tensor:
    """max-Sensitivity per sample ``(B, K)`` (Yeh et al. 2019; ALGORITHMS §4.4), lower is
    better: the largest :func:`map_distances` between ``maps`` (the explanation of ``x``) and the
    explainer's maps of ``n_samples`` perturbed copies ``y = x + noise`` for the same
    ``targets``, explained ``batch_size`` copies at a time (``None``: as many as the forward
    pass's memory estimate fits in ``max_batch_memory`` bytes; leave room for the
    explainer's backward pass)."""
    check_inputs(x, maps, targets)
    n = n_samples
    draws = noise.sample(x, n, keys).flatten(0, 1)
    classes = targets.repeat_interleave(n, dim=0)

    def distances(index: Tensor) -> Tensor:
        perturbed = explainer(x[index // n] + draws[index], classes[index])
        return map_distances(maps[index // n], perturbed, relative)

    batching = metric_batching(batch_size, max_batch_memory)
    size = batching.sizes(forward_bytes((x,)),
                             ("sensitivity", id(explainer), tuple(x.shape[1:]), x.dtype))
    found = run_items(classes.shape[0], distances, size, device=x.device, desc="sensitivity",
                      progress=batching.progress)
    return found.view(x.shape[0], n, -1).amax(dim=1)


def method_explainer(
    model: nn.Module, method: str, layer: LayerSpec = None, *, seed: int = 0, **options: Any
) -> Explainer:
    """``camkit.explain`` with one method as an :data:`Explainer` (normalised maps
    ``(m, K, H, W)``), seeded identically on every call so stochastic methods draw the same
    noise for ``x`` and its perturbed copies (ALGORITHMS §4.4). Warnings about constant maps
    on perturbed copies are silenced; such maps count as they are (zeros)."""

    def run(images: Tensor, targets: Tensor) -> Tensor:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*maps were constant",
                                    category=RuntimeWarning)
            return explain(model, images, targets, (method,), layer, seed=seed,
                           **options)[method]

    return run
