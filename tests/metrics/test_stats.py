"""Student-t quantiles against published table values, and the mean ± CI summary by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from camkit.metrics.stats import student_t_cdf, student_t_quantile, summarize


@pytest.mark.parametrize(("df", "quantile"), [
    (1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (19, 2.0930), (30, 2.0423),
    (120, 1.9799),
])
def test_t_quantiles_match_the_table(df, quantile):
    assert student_t_quantile(0.975, df) == pytest.approx(quantile, abs=1e-4)


def test_t_cdf_by_hand():
    assert student_t_cdf(0.0, 3) == pytest.approx(0.5)
    assert student_t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/π
    assert student_t_cdf(-1.0, 1) == pytest.approx(0.25)
    assert student_t_quantile(0.95, 10) == pytest.approx(1.8125, abs=1e-4)


def test_summary_by_hand():
    s = summarize(np.array([1.0, 2.0, 3.0, np.nan]))
    half = 4.302653 / math.sqrt(3)  # t(0.975, 2) · sd 1 / √3
    assert (s.mean, s.n, s.undefined) == (2.0, 3, 1)
    assert s.low == pytest.approx(2 - half) and s.high == pytest.approx(2 + half)
    one = summarize(np.array([5.0]))
    assert one.mean == 5.0 and math.isnan(one.low)
    empty = summarize(np.array([np.nan, np.nan]))
    assert empty.n == 0 and empty.undefined == 2 and math.isnan(empty.mean)
