"""How alike two maps are: rank and linear correlation, and structural similarity, batched.

The randomisation checks (:mod:`camkit.metrics.randomisation`) compare a method's maps with
the maps of the same method on a randomised network or for another class; faithfulness
correlation (:mod:`camkit.metrics.correlation`) correlates attributions with score drops.
Every function compares ``a`` and ``b`` of the same shape ``(..., n)`` (or ``(..., H, W)``
for SSIM) along the last dimension(s) and returns ``(...)`` float32; an undefined value (a
constant input to a correlation) is NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

SSIM_WINDOW = 7  # skimage's default: a 7 × 7 uniform window
SSIM_K1, SSIM_K2 = 0.01, 0.03


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson's ``r = Σ(a − ā)(b − b̄) / (‖a − ā‖ ‖b − b̄‖)`` along the last dimension,
    ``(..., n)`` twice → ``(...)``; NaN where ``a`` or ``b`` is constant."""
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a, b = a.to(dtype), b.to(dtype)
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    size = a.norm(dim=-1) * b.norm(dim=-1)
    r = (a * b).sum(dim=-1) / size
    return r.where(size > 0, torch.nan).clamp(-1, 1)


def ranks(values: Tensor) -> Tensor:
    """``(..., n)`` → ``(..., n)`` float ranks from 0 along the last dimension; tied values
    share the mean of their ranks (as ``scipy.stats.rankdata``, minus 1)."""
    flat = values.reshape(-1, values.shape[-1])
    ordered, order = flat.sort(dim=-1, stable=True)
    n = flat.shape[-1]
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = starts.cumsum(dim=-1) - 1  # tie group of each sorted position
    position = torch.arange(n, device=values.device, dtype=torch.float64).expand_as(ordered)
    first = torch.full_like(position, float(n)).scatter_reduce(-1, group, position, "amin")
    last = torch.zeros_like(position).scatter_reduce(-1, group, position, "amax")
    mean_rank = ((first + last) / 2).gather(-1, group)
    out = torch.empty_like(mean_rank).scatter_(-1, order, mean_rank)
    return out.view(values.shape)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's ``ρ``: :func:`pearson` of the :func:`ranks` (ties share their mean rank),
    ``(..., n)`` twice → ``(...)``; NaN where ``a`` or ``b`` is constant."""
    return pearson(ranks(a), ranks(b)).float()


def ssim(a: Tensor, b: Tensor, window: int | tuple[int, int] = SSIM_WINDOW,
         data_range: float | None = None) -> Tensor:
    """Mean structural similarity (Wang et al., IEEE TIP 2004, eq. 13) of ``(..., H, W)``
    maps → ``(...)``, as ``skimage.metrics.structural_similarity`` computes it:

    ``SSIM = (2 μ_a μ_b + C₁)(2 σ_ab + C₂) / ((μ_a² + μ_b² + C₁)(σ_a² + σ_b² + C₂))`` with
    local means and sample (co)variances over a uniform ``window`` (``N = h·w`` pixels,
    variances scaled by ``N / (N − 1)``), ``C₁ = (0.01 L)²``, ``C₂ = (0.03 L)²``, averaged
    over the positions where the window fits inside the map. ``L`` is ``data_range``, or
    by default ``max − min`` over both maps of each pair (Quantus's choice)."""
    wh, ww = (window, window) if isinstance(window, int) else window
    if a.shape != b.shape or a.dim() < 2:
        raise ValueError(f"ssim needs two maps of the same shape (..., H, W), got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[-2] < wh or a.shape[-1] < ww:
        raise ValueError(f"maps of {tuple(a.shape[-2:])} are smaller than the SSIM window "
                         f"{(wh, ww)}")
    lead = a.shape[:-2]
    a = a.reshape(-1, 1, *a.shape[-2:]).float()
    b = b.reshape(-1, 1, *b.shape[-2:]).float()
    if data_range is None:
        both = torch.cat([a.flatten(1), b.flatten(1)], dim=1)
        span = (both.amax(dim=1) - both.amin(dim=1)).view(-1, 1, 1, 1)
    else:
        span = a.new_full((a.shape[0], 1, 1, 1), float(data_range))
    c1, c2 = (SSIM_K1 * span) ** 2, (SSIM_K2 * span) ** 2
    n = wh * ww

    def local(t: Tensor) -> Tensor:
        return F.avg_pool2d(t, (wh, ww), stride=1)

    mu_a, mu_b = local(a), local(b)
    scale = n / (n - 1)
    var_a = scale * (local(a * a) - mu_a * mu_a)
    var_b = scale * (local(b * b) - mu_b * mu_b)
    cov = scale * (local(a * b) - mu_a * mu_b)
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)
             / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)))
    return index.mean(dim=(1, 2, 3)).view(lead)


def minmax_abs(maps: Tensor) -> Tensor:
    """``(..., H, W)`` → ``|M|`` scaled by its own min and max to [0, 1] (zeros when
    constant): the normalisation Adebayo et al. apply before comparing maps."""
    flat = maps.abs().flatten(-2)
    low, high = flat.amin(dim=-1, keepdim=True), flat.amax(dim=-1, keepdim=True)
    span = high - low
    scaled = (flat - low) / span.where(span > 0, 1.0)
    return scaled.view(maps.shape)


Similarity = Callable[[Tensor, Tensor], Tensor]  # maps (..., H, W) twice -> (...)

SIMILARITIES: dict[str, Similarity] = {
    "spearman-abs": lambda a, b: spearman(a.abs().flatten(-2), b.abs().flatten(-2)),
    "spearman": lambda a, b: spearman(a.flatten(-2), b.flatten(-2)),
    "ssim": lambda a, b: ssim(minmax_abs(a), minmax_abs(b), data_range=1.0),
}
"""The map similarities of the randomisation checks (Adebayo et al. 2018, §3): Spearman's rank
correlation of the absolute maps and of the signed maps, and SSIM of the absolute maps
min-max normalised to [0, 1]."""


def similarity(name: str) -> Similarity:
    """The similarity ``name`` of :data:`SIMILARITIES`; an unknown name fails with the list."""
    if name not in SIMILARITIES:
        raise ValueError(f"unknown similarity {name!r}; use one of {sorted(SIMILARITIES)}")
    return SIMILARITIES[name]
