"""The standard post-processing P(M) of ALGORITHMS §0: ReLU, bilinear upsampling, min-max.

Upsampling is separable: along each axis, bilinear interpolation (``align_corners=False``, as
``F.interpolate``) is a ``(out, in)`` matrix ``R`` whose rows hold two weights summing to 1,
so the upsampled map is ``U = R_h M R_wᵀ``. Min-max normalisation is affine, so it commutes
with ``U``: ``(U − lo) / (hi − lo) = R_h ((M − lo) / (hi − lo)) R_wᵀ``. :func:`postprocess`
normalises the small map and writes each full-resolution map once (two small matrix
products), instead of upsampling, then reading and rewriting the large maps.
The extremes ``lo``, ``hi`` of ``U`` come exactly from a few of its pixels
(:func:`upsampled_range`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

EPS = 1e-7
RTOL = 1e-5  # relative spread below which a raw map counts as constant (float32 rounding)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """``(B, K, h, w)`` → ``(B, K, H, W)``, bilinear with ``align_corners=False``."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def interpolation_matrix(n_in: int, n_out: int, device: torch.device | None = None) -> Tensor:
    """``(n_out, n_in)`` float32 weights of bilinear resampling along one axis, as
    ``F.interpolate(..., align_corners=False)`` computes them: output ``i`` reads the source
    coordinate ``s = max(0, (i + ½)·n_in/n_out − ½)`` from pixels ``⌊s⌋`` and ``⌊s⌋ + 1``
    (clamped to the last) with weights ``1 − λ`` and ``λ = s − ⌊s⌋``."""
    out = torch.arange(n_out, dtype=torch.float64)
    source = ((out + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    low = source.floor().long().clamp(max=n_in - 1)
    high = (low + 1).clamp(max=n_in - 1)
    frac = source - low
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    weights.index_put_((rows, low), 1 - frac, accumulate=True)
    weights.index_put_((rows, high), frac, accumulate=True)
    return weights.float().to(device)


def extreme_rows(weights: Tensor) -> Tensor:
    """Indices of the rows of an interpolation matrix (:func:`interpolation_matrix`) where an
    upsampled map can take its extremes: the first and last output of each run of outputs that
    read the same pair of source pixels.

    Within one such cell, a bilinear map is affine in each axis's weight ``λ`` for the other
    fixed, so over any set of sampled ``λ`` its minimum and maximum lie at the smallest or the
    largest ``λ`` of the run, on both axes: the extremes of ``U`` are among these rows ×
    these columns."""
    first_source = weights.ne(0).int().argmax(dim=1)
    starts = torch.ones_like(first_source, dtype=torch.bool)
    starts[1:] = first_source[1:] != first_source[:-1]
    ends = torch.ones_like(starts)
    ends[:-1] = starts[1:]
    return torch.nonzero(starts | ends).squeeze(1)


def upsampled_range(maps: Tensor, rows: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
    """The exact ``(B, K, 1, 1)`` minimum and maximum of ``R_h M R_wᵀ`` for ``maps`` ``(B, K, h,
    w)``, from the upsampled values on :func:`extreme_rows` only (``rows``, ``cols``: those rows
    of ``R_h`` and ``R_w``)."""
    sampled = (rows @ maps @ cols.T).flatten(2)
    return sampled.amin(dim=2)[..., None, None], sampled.amax(dim=2)[..., None, None]


def minmax(maps: Tensor, inplace: bool = False) -> tuple[Tensor, Tensor]:
    """Per-map min-max to [0, 1]: ``(M − min) / (max − min + 1e-7)``.

    Returns ``(normalised maps, constant)`` where ``constant`` ``(B, K)`` flags maps with
    ``max == min``; those become all zeros instead of NaN. ``inplace=True`` normalises ``maps``
    itself (for a caller that owns it: it saves allocating, and page-faulting, a copy)."""
    flat = maps.flatten(2)
    low = flat.amin(dim=2, keepdim=True)  # (amin, amax: many times faster than aminmax on CPU)
    span = flat.amax(dim=2, keepdim=True) - low
    varies = span > 0
    scale = torch.where(varies, 1 / (span + EPS), 0.0)  # constant maps are scaled to zeros
    shifted = flat.sub_(low) if inplace else flat - low
    return shifted.mul_(scale).view_as(maps), ~varies.squeeze(2)


def constant_maps(maps: Tensor, rtol: float = RTOL) -> Tensor:
    """``(B, K)`` flags of the maps ``(B, K, h, w)`` whose spread ``max − min`` is at most
    ``rtol`` times their largest magnitude: constant up to rounding (a 1 × 1 map always is)."""
    flat = maps.flatten(2)
    span = flat.amax(dim=2) - flat.amin(dim=2)
    return span <= rtol * flat.abs().amax(dim=2)


def postprocess(raw: Tensor, size: tuple[int, int], relu: bool = True) -> tuple[Tensor, Tensor]:
    """P(M): ReLU (unless the map is signed evidence), upsample to ``size``, min-max.

    ``raw`` is ``(B, K, h, w)``; returns ``(maps (B, K, H, W) in [0, 1], constant (B, K))``.
    Constancy is decided at the layer's resolution, before upsampling, whose rounding ripples
    min-max would otherwise stretch into a full-scale striped map; constant maps are zeros.
    The result equals min-max of ``F.interpolate`` up to float32 rounding (module docstring).
    """
    maps = raw.float().nan_to_num(0.0)  # a new tensor: the steps below may work in place
    if relu:
        maps.clamp_(min=0)
    constant = constant_maps(maps)
    if tuple(maps.shape[-2:]) == tuple(size):
        normalised, flat = minmax(maps, inplace=True)
        return normalised.masked_fill_(constant[..., None, None], 0.0), constant | flat
    along_h = interpolation_matrix(maps.shape[-2], size[0], maps.device)
    along_w = interpolation_matrix(maps.shape[-1], size[1], maps.device)
    low, high = upsampled_range(maps, along_h[extreme_rows(along_h)],
                                along_w[extreme_rows(along_w)])
    span = high - low
    varies = (span > 0) & ~constant[..., None, None]
    normalised = maps.sub_(low).mul_(torch.where(varies, 1 / (span + EPS), 0.0))
    upsampled = along_h @ normalised @ along_w.T
    return upsampled.clamp_(0.0, 1.0), ~varies[..., 0, 0]
