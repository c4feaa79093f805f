"""The Browse tab's logic on a real explain-dataset folder with its evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from camkit.explorer.browse import SCORE, Browser, Evaluation, as_filter, describe, open_browser
from tests.explorer.conftest import RUN_METHODS, RUN_METRICS, SmallRun


@pytest.fixture(scope="module")
def browser(small_run: SmallRun, lite) -> Browser:
    return open_browser(small_run.results, small_run.evaluation, lite)


def test_one_row_per_image_method_and_target(browser: Browser) -> None:
    assert len(browser.rows) == 6 * len(RUN_METHODS) * 2
    assert browser.sort_keys == [*RUN_METRICS, SCORE]
    first = browser.rows[0]
    stored = browser.results[first.id]
    assert first.class_index == int(stored.targets[first.k])
    assert first.score == pytest.approx(float(stored.scores[first.k]))


def test_evaluation_values_join_the_predicted_class_rows(browser: Browser, small_run) -> None:
    document = json.loads((small_run.evaluation / "results.json").read_text())
    table = document["per_sample"]["layercam"]
    name, cls = table["pairs"][2]
    (row,) = [r for r in browser.rows
              if (r.id, r.method, r.class_index) == (name, "layercam", cls)]
    assert row.k == 0  # the evaluated (predicted) class is the first of the top 2
    assert row.metrics["average-drop"] == pytest.approx(table["average-drop"][2])
    assert all(not r.metrics for r in browser.rows if r.k == 1)


@pytest.mark.parametrize("key", [*RUN_METRICS, SCORE])
def test_sorting_worst_first_and_best_first(browser: Browser, key: str) -> None:
    worst = [r.value(key) for r in browser.query(key, worst=True, page_size=100).rows]
    best = [r.value(key) for r in browser.query(key, worst=False, page_size=100).rows]
    defined = [v for v in worst if not math.isnan(v)]
    higher_is_better = key == SCORE or browser.evaluation.higher_is_better[key]
    assert defined == sorted(defined, reverse=not higher_is_better)
    assert [v for v in best if not math.isnan(v)] == defined[::-1] or len(set(defined)) < len(
        defined)  # ties may come in another order
    assert all(math.isnan(v) for v in worst[len(defined):])  # undefined last


def test_filters(browser: Browser) -> None:
    only = browser.query(SCORE, method="layercam", page_size=100).rows
    assert len(only) == 12 and {r.method for r in only} == {"layercam"}
    name = browser.class_names[0]
    assert {r.class_name for r in browser.query(SCORE, class_name=name, page_size=100).rows} \
        == {name}
    flat = browser.query(SCORE, constant_only=True, page_size=100).rows
    assert all(r.constant for r in flat)
    assert len(flat) == sum(r.constant for r in browser.rows)
    with pytest.raises(ValueError, match="cannot sort by"):
        browser.query("nope")


def test_pages(browser: Browser) -> None:
    pages = [browser.query(SCORE, page=n, page_size=10) for n in range(3)]
    assert [len(p.rows) for p in pages] == [10, 10, 4] and pages[0].pages == 3
    seen = [(r.id, r.method, r.k) for p in pages for r in p.rows]
    assert len(set(seen)) == 24
    assert browser.query(SCORE, page=99, page_size=10).number == 2  # clamped
    assert describe(pages[2]) == "maps 21–24 of 24 (page 3 of 3)"
    assert describe(browser.query(SCORE, class_name="no such class")) == (
        "no maps match these filters")
    assert as_filter("all methods", "all methods") is None and as_filter("x", "all") == "x"


def test_pictures_draw_the_stored_map_on_the_image(browser: Browser) -> None:
    rows = browser.query(SCORE, page_size=3).rows
    pictures = browser.pictures(rows, alpha=0.5)
    assert [p.shape for p in pictures] == [(224, 224, 3)] * 3
    view = browser.view(rows[0].id)
    assert view.std() > 10  # the photo, not the grey stand-in
    assert not np.array_equal(pictures[0], view)
    side = browser.side_by_side(rows[0])
    assert [caption for _, caption in side] == list(RUN_METHODS)


def test_missing_images_are_grey(browser: Browser) -> None:
    assert (browser.view("not-an-id.jpg") == 128).all()


def test_evaluation_from_file_or_folder(small_run: SmallRun) -> None:
    a = Evaluation.load(small_run.evaluation)
    b = Evaluation.load(small_run.evaluation / "results.json")
    assert a.values.keys() == b.values.keys() and len(a.values) == 6 * len(RUN_METHODS)
    assert a.higher_is_better == {"average-drop": False, "increase-in-confidence": True}
