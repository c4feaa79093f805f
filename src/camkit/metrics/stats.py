"""Summaries of per-sample metric values: the mean with a Student-t confidence interval."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SIMPSON_INTERVALS = 2000


def student_t_cdf(t: float, df: int) -> float:
    """``P(T ≤ t)`` for Student's t with ``df`` degrees of freedom: ``1/2 + ∫_0^t p(u) du``
    with ``p(u) = Γ((ν+1)/2) / (√(νπ) Γ(ν/2)) · (1 + u²/ν)^(−(ν+1)/2)``, by Simpson's rule."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    u = np.linspace(0.0, abs(t), SIMPSON_INTERVALS + 1)
    density = np.exp(log_c - (df + 1) / 2 * np.log1p(u * u / df))
    weights = np.ones_like(u)
    weights[1:-1:2], weights[2:-1:2] = 4, 2
    area = float((weights * density).sum()) * abs(t) / (3 * SIMPSON_INTERVALS)
    return 0.5 + math.copysign(area, t)


def student_t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t (``0.5 < p < 1``), by bisection on
    :func:`student_t_cdf` to 1e-10."""
    if not 0.5 < p < 1:
        raise ValueError(f"p must be in (0.5, 1), got {p}")
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:
        low, high = high, 2 * high
    while high - low > 1e-10:
        middle = (low + high) / 2
        low, high = (middle, high) if student_t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2


@dataclass(frozen=True)
class Summary:
    """Mean of the finite values, its ``level`` confidence interval (``mean ± t·s/√n``; NaN
    for fewer than 2 values), how many values were finite and how many were not (undefined)."""

    mean: float
    low: float
    high: float
    n: int
    undefined: int


def summarize(values: np.ndarray, level: float = 0.95) -> Summary:
    """:class:`Summary` of a 1-D array; NaN entries are counted as undefined and left out."""
    values = np.asarray(values, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    n, undefined = finite.size, values.size - finite.size
    if n == 0:
        return Summary(math.nan, math.nan, math.nan, 0, undefined)
    mean = float(finite.mean())
    if n < 2:
        return Summary(mean, math.nan, math.nan, n, undefined)
    half = student_t_quantile((1 + level) / 2, n - 1) * float(finite.std(ddof=1)) / math.sqrt(n)
    return Summary(mean, mean - half, mean + half, n, undefined)
