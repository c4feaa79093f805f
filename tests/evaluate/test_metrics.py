"""The issue-17 metrics through ``camkit.evaluate``: each cell equals the metric function on
the same maps, targets and seeds, and what every method shares is computed once per batch."""

from __future__ import annotations

import importlib

import pytest
import torch

import camkit
from camkit.evaluate import COMPLEXITY, FAITHFULNESS_EXTRA, METRICS, RANDOMISATION, evaluate
from camkit.metrics import (
    complexity,
    faithfulness_correlation,
    model_explainer,
    parameter_randomisation,
    pixel_flipping,
    random_logit,
    road,
    road_lerf,
    road_morf,
    sparseness,
)
from camkit.metrics.robustness import method_explainer
from tests.models import labelled_case

OPTIONS = {"road": {"percentages": (20, 60)}, "road-morf": {"percentages": (20, 60)},
           "road-lerf": {"percentages": (20, 60)}, "pixel-flipping": {"steps": 8},
           "faithfulness-correlation": {"n_runs": 6, "subset_size": 9}}


@pytest.fixture
def setup():
    return labelled_case(4, 14)


def test_cells_equal_the_metric_functions(setup):
    model, data = setup
    names = [*FAITHFULNESS_EXTRA, *COMPLEXITY, *RANDOMISATION]
    results = evaluate(model, data, ["gradcam", "layercam"], names, "features.2",
                       targets="label", metric_options=OPTIONS, seed=3, batch_size=4,
                       progress=False)
    x = torch.stack([d["image"] for d in data])
    targets = torch.tensor([[d["label"]] for d in data])
    for method in ("gradcam", "layercam"):
        maps = camkit.explain(model, x, targets, method, "features.2", seed=3)[method]
        keys = list(range(4))
        road_options = dict(percentages=(20, 60), seed=3, keys=keys)
        expected = {
            "road": road(model, x, maps, targets, **road_options),
            "road-morf": road_morf(model, x, maps, targets, **road_options),
            "road-lerf": road_lerf(model, x, maps, targets, **road_options),
            "pixel-flipping": pixel_flipping(model, x, maps, targets, steps=8),
            "faithfulness-correlation": faithfulness_correlation(
                model, x, maps, targets, n_runs=6, subset_size=9, seed=3, keys=keys),
            "sparseness": sparseness(maps), "complexity": complexity(maps),
            "randomisation": parameter_randomisation(
                model, x, targets, model_explainer(method, "features.2", seed=3), seed=3,
                until=0.5, similarities=("spearman-abs",)).similarity["spearman-abs"][..., -1],
            "random-logit": random_logit(method_explainer(model, method, "features.2", seed=3),
                                         x, maps, targets, n_classes=4, seed=3, keys=keys),
        }
        for name, values in expected.items():
            got = torch.from_numpy(results.values[method][name]).float()
            assert torch.allclose(got, values.flatten().float(), atol=1e-5, equal_nan=True), name
    assert not results.failures


def test_directions_and_groups():
    assert METRICS["road"].higher_is_better and not METRICS["road-morf"].higher_is_better
    assert METRICS["road-lerf"].higher_is_better and METRICS["sparseness"].higher_is_better
    assert not METRICS["complexity"].higher_is_better
    assert METRICS["faithfulness-correlation"].higher_is_better
    assert not METRICS["randomisation"].higher_is_better
    assert not METRICS["random-logit"].higher_is_better
    assert METRICS["road"].options == ["percentages", "noise"]
    assert METRICS["randomisation"].options == ["layers", "measure", "fraction"]


def test_the_subsets_and_their_drops_are_shared_by_the_methods(setup, monkeypatch):
    model, data = setup
    adapters = importlib.import_module("camkit.evaluate.metrics")
    calls = []
    original = adapters.subset_drops

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(adapters, "subset_drops", counting)
    evaluate(model, data, ["gradcam", "layercam", "hirescam"], ["faithfulness-correlation"],
             "features.2", metric_options={"faithfulness-correlation": OPTIONS[
                 "faithfulness-correlation"]}, batch_size=2, progress=False)
    assert len(calls) == 2  # one per batch, not per method
