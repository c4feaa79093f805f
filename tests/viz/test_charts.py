"""The report's line chart: a picture of the given size with the series drawn in their colours."""

from __future__ import annotations

import math

import numpy as np
import pytest

from camkit.viz.charts import COLOURS, line_chart


def test_draws_each_series_and_leaves_gaps_for_missing_values():
    picture = line_chart({"a": [1.0, 0.5, -0.2], "b": [0.9, math.nan, 0.8]}, threshold=0.5,
                         title="similarity", size=(300, 200))
    assert picture.shape == (200, 300, 3) and picture.dtype == np.uint8
    for colour in COLOURS[:2]:
        assert (picture == np.array(colour, dtype=np.uint8)).all(axis=2).sum() > 20
    only_a = line_chart({"a": [1.0, 0.5, -0.2]}, size=(300, 200))
    assert not (only_a == np.array(COLOURS[1], dtype=np.uint8)).all(axis=2).any()


def test_needs_a_series():
    with pytest.raises(ValueError, match="at least one series"):
        line_chart({})
