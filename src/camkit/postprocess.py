"""The standard post-processing P(M) of ALGORITHMS §0: ReLU, bilinear upsampling, min-max."""

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
    """
    maps = raw.float().nan_to_num(0.0)  # a new tensor: the steps below may work in place
    if relu:
        maps.clamp_(min=0)
    constant = constant_maps(maps)
    normalised, flat = minmax(upsample(maps, size), inplace=True)
    return normalised.masked_fill_(constant[..., None, None], 0.0), constant | flat
