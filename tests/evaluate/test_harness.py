"""The evaluation harness: its values equal direct metric calls, it survives failing samples,
writes its tables, and its CLI runs on the packaged real data."""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import camkit
from camkit.cli.evaluate import add_parser, metrics_for
from camkit.data import quokka
from camkit.data.files import evaluation_data
from camkit.evaluate import (
    DEFAULT_METRICS,
    METRICS,
    EvaluationResults,
    as_sample,
    available_metrics,
    evaluate,
)
from camkit.metrics import (
    Noise,
    average_drop,
    deletion_auc,
    energy_share,
    increase_in_confidence,
    infidelity,
    insertion_auc,
    max_sensitivity,
    method_explainer,
    pointing_game,
)
from camkit.zoo import load_model
from tests.models import TinyCNN

SIZE, CLASSES = 12, 4
FAST = {"deletion": {"steps": 4}, "insertion": {"steps": 4},
        "infidelity": {"n_samples": 3}, "infidelity-normalized": {"n_samples": 3},
        "sensitivity": {"n_samples": 2}, "pointing-mask": {"tolerance": 0}}
ALL = ["average-drop", "increase-in-confidence", "deletion", "insertion", "infidelity",
       "infidelity-normalized", "sensitivity", "energy-mask", "pointing-mask", "energy-leak"]


def multilabel_data(n=6, seed=0):
    """Dict items with multi-hot labels and one square mask per present class."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        label = torch.zeros(CLASSES)
        label[torch.randperm(CLASSES, generator=g)[: 1 + i % 3]] = 1
        masks = torch.zeros(CLASSES, SIZE, SIZE, dtype=torch.bool)
        for c in label.nonzero().flatten().tolist():
            top, left = (int(v) for v in torch.randint(0, SIZE - 4, (2,), generator=g))
            masks[c, top : top + 4, left : left + 4] = True
        items.append({"image": torch.randn(3, SIZE, SIZE, generator=g), "label": label,
                      "mask": masks, "name": f"s{i}"})
    return items


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TinyCNN(classes=CLASSES).eval()


def padded_targets(items):
    positives = [item["label"].nonzero().flatten().tolist() for item in items]
    width = max(map(len, positives))
    targets = torch.tensor([p + [p[0]] * (width - len(p)) for p in positives])
    valid = torch.tensor([[k < len(p) for k in range(width)] for p in positives])
    return targets, valid


def direct_values(model, items, method):
    """Every metric computed on the whole set at once with the metric functions."""
    x = torch.stack([item["image"] for item in items])
    targets, valid = padded_targets(items)
    masks = torch.stack([item["mask"] for item in items])
    keys = list(range(len(items)))
    maps = camkit.explain(model, x, targets, [method], "features")[method]
    region = masks[torch.arange(len(items))[:, None], targets]
    leak = torch.stack([torch.stack([
        masks[b, [o for o in targets[b][valid[b]].tolist() if o != c]].any(dim=0)
        for c in targets[b].tolist()]) for b in range(len(items))])
    common = {"confidence": "sigmoid"}
    values = {
        "average-drop": average_drop(model, x, maps, targets, **common),
        "increase-in-confidence": increase_in_confidence(model, x, maps, targets, **common),
        "deletion": deletion_auc(model, x, maps, targets, steps=4, **common),
        "insertion": insertion_auc(model, x, maps, targets, steps=4, **common),
        "infidelity": infidelity(model, x, maps, targets, n_samples=3, keys=keys, **common),
        "infidelity-normalized": infidelity(model, x, maps, targets, n_samples=3, keys=keys,
                                            normalize=True, **common),
        "sensitivity": max_sensitivity(method_explainer(model, method, "features"), x, maps,
                                       targets, noise=Noise("uniform", 0.02), n_samples=2,
                                       keys=keys),
        "energy-mask": energy_share(maps, region),
        "pointing-mask": pointing_game(maps, region, tolerance=0),
        "energy-leak": energy_share(maps, leak).where(leak.flatten(2).any(2), float("nan")),
    }
    return {k: v[valid].numpy() for k, v in values.items()}, targets[valid].tolist()


def test_harness_values_equal_direct_metric_calls(model):
    items = multilabel_data()
    results = evaluate(model, items, ["gradcam", "layercam"], ALL, "features", batch_size=4,
                       metric_options=FAST, progress=False)
    assert results.settings["task"] == "multi-label" and results.settings["targets"] == "label"
    assert not results.failures
    for method in ("gradcam", "layercam"):
        expected, classes = direct_values(model, items, method)
        assert [c for _, c in results.pairs[method]] == classes
        assert len(results.pairs[method]) == sum(int(i["label"].sum()) for i in items)
        for metric in ALL:
            np.testing.assert_allclose(results.values[method][metric], expected[metric],
                                       rtol=1e-4, atol=1e-6, err_msg=f"{method} {metric}")
        assert results.images[method] == len(items)
        assert results.explain_seconds[method] > 0
    assert math.isnan(results.values["gradcam"]["energy-leak"][0])  # s0 has one object


def test_metric_batching_knobs_keep_the_values(model):
    """The metrics' forward passes in chunks of 1, or sized by a memory budget of 1 byte (one
    image a pass), give the values of the default chunks of 32 (up to float rounding, which
    depends on the batch size in convolutions)."""
    items = multilabel_data()
    metrics = ["average-drop", "deletion", "infidelity", "sensitivity"]
    options = {m: FAST[m] for m in metrics if m in FAST}
    runs = [evaluate(model, items, "gradcam", metrics, "features", metric_options=options,
                     progress=False, **knobs)
            for knobs in ({}, {"metric_batch_size": 1},
                          {"metric_batch_size": None, "max_batch_memory": 1})]
    for run in runs[1:]:
        for metric in metrics:
            np.testing.assert_allclose(run.values["gradcam"][metric],
                                       runs[0].values["gradcam"][metric], rtol=1e-4, atol=1e-6,
                                       err_msg=metric)


def test_a_compiled_scoring_model_keeps_the_values(model):
    """torch.compile is the metrics' compile option: ``scoring_model=torch.compile(model)``
    scores every perturbed input compiled while the explanations run the model itself."""
    items = multilabel_data()
    metrics = ["average-drop", "deletion"]
    options = {m: FAST[m] for m in metrics if m in FAST}
    runs = [evaluate(model, items, "gradcam", metrics, "features", metric_options=options,
                     metric_batch_size=8, progress=False, scoring_model=scoring)
            for scoring in (None, torch.compile(model))]
    for metric in metrics:
        np.testing.assert_allclose(runs[1].values["gradcam"][metric],
                                   runs[0].values["gradcam"][metric], rtol=1e-4, atol=1e-6,
                                   err_msg=metric)


def test_single_label_data_uses_the_prediction_and_softmax(model):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, SIZE, SIZE, generator=g)
    items = [(x[i], 3) for i in range(5)]
    results = evaluate(model, items, "gradcam", ["average-drop"], "features", batch_size=2,
                       progress=False)
    predicted = model(x).argmax(dim=1)
    assert [c for _, c in results.pairs["gradcam"]] == predicted.tolist()
    maps = camkit.explain(model, x, None, ["gradcam"], "features")["gradcam"]
    expected = average_drop(model, x, maps, predicted[:, None], confidence="softmax")
    np.testing.assert_allclose(results.values["gradcam"]["average-drop"], expected[:, 0],
                               rtol=1e-5)
    labelled = evaluate(model, items, "gradcam", ["average-drop"], "features", targets="label",
                        progress=False)
    assert {c for _, c in labelled.pairs["gradcam"]} == {3}


class Flaky:
    """A map-style data set whose item 4 cannot be read."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        if index == 4:
            raise OSError("disk on fire")
        return self.items[index]


def test_failing_samples_are_reported_and_the_rest_evaluated(model):
    items = multilabel_data(6)
    items[2] = {**items[2], "image": torch.full((3, SIZE, SIZE), math.nan)}
    metrics = ["average-drop", "energy-mask"]
    results = evaluate(model, Flaky(items), ["gradcam"], metrics, "features", batch_size=3,
                       progress=False)
    failures = {(f.sample, f.method, f.stage) for f in results.failures}
    assert failures == {("s2", "gradcam", "explain"), ("4", None, "load")}
    assert "NaN" in next(f.error for f in results.failures if f.stage == "explain")
    assert "disk on fire" in next(f.error for f in results.failures if f.stage == "load")
    assert results.images["gradcam"] == 4
    clean = evaluate(model, [items[i] for i in (0, 1, 3, 5)], ["gradcam"], metrics, "features",
                     progress=False)
    for metric in metrics:
        np.testing.assert_allclose(results.values["gradcam"][metric],
                                   clean.values["gradcam"][metric], rtol=1e-5)


def test_a_failing_metric_loses_only_its_sample(model):
    g = torch.Generator().manual_seed(2)
    items = [{"image": torch.randn(3, 8, 8, generator=g), "label": i % CLASSES,
              "cells": torch.tensor([0, 1, 2, 3]), "grid": (2, 2), "name": f"m{i}"}
             for i in range(4)]
    del items[1]["cells"]
    results = evaluate(model, items, ["gradcam"], ["grid-pointing", "average-drop"], "features",
                       targets="label", progress=False)
    assert [(f.sample, f.stage) for f in results.failures] == [("m1", "grid-pointing")]
    values = results.values["gradcam"]["grid-pointing"]
    assert math.isnan(values[1]) and np.isfinite(values[[0, 2, 3]]).all()
    assert np.isfinite(results.values["gradcam"]["average-drop"]).all()


def test_mixed_image_sizes_and_empty_labels():
    torch.manual_seed(0)
    model = TinyCNN(classes=CLASSES).eval()
    items = multilabel_data(4)
    items[1] = {**items[1], "image": torch.randn(3, 16, 16), "mask": torch.zeros(16, 16)}
    items[3] = {**items[3], "label": torch.zeros(CLASSES)}
    results = evaluate(model, items, ["gradcam"], ["energy-mask"], "features", progress=False)
    assert not results.failures
    assert results.images["gradcam"] == 3
    assert results.settings["skipped (no positive class)"] == 1
    assert math.isnan(results.values["gradcam"]["energy-mask"][1])  # empty mask: undefined


def test_tables_files_and_runs_combined(model, tmp_path):
    items = multilabel_data(4)
    runs = [evaluate(model, items, ["gradcam", "hirescam"], ["average-drop", "energy-mask"],
                     "features", seed=seed, progress=False, out=tmp_path / f"seed{seed}")
            for seed in (0, 1)]
    folder = tmp_path / "seed0"
    rows = list(csv.DictReader(io.StringIO((folder / "results.csv").read_text())))
    assert [(r["method"], r["metric"]) for r in rows] == [
        ("gradcam", "average-drop"), ("gradcam", "energy-mask"),
        ("hirescam", "average-drop"), ("hirescam", "energy-mask")]
    summary = runs[0].summary("gradcam", "energy-mask")
    assert float(rows[1]["mean"]) == pytest.approx(summary.mean)
    assert float(rows[1]["ci95_high"]) == pytest.approx(summary.high)
    document = json.loads((folder / "results.json").read_text())
    assert len(document["per_sample"]["gradcam"]["energy-mask"]) == len(runs[0].pairs["gradcam"])
    markdown = (folder / "results.md").read_text()
    assert "| gradcam |" in markdown and "±" in markdown and "energy-mask ↑" in markdown
    combined = EvaluationResults.combine(runs, ["seed 0", "seed 1"])
    means = [r.summary("hirescam", "average-drop").mean for r in runs]
    assert combined.summary("hirescam", "average-drop").mean == pytest.approx(np.mean(means))
    assert combined.summary("hirescam", "average-drop").n == 2
    assert combined.images["gradcam"] == 8


def test_bad_arguments_are_named(model):
    items = multilabel_data(2)
    with pytest.raises(ValueError, match="Did you mean 'average-drop'"):
        evaluate(model, items, "gradcam", ["average-dorp"])
    with pytest.raises(ValueError, match="no option"):
        evaluate(model, items, "gradcam", ["deletion"], metric_options={"deletion": {"step": 3}})
    with pytest.raises(ValueError, match="not among the methods"):
        evaluate(model, items, "gradcam", ["deletion"], method_options={"mcam": {}})
    with pytest.raises(ValueError, match="targets must be"):
        evaluate(model, items, "gradcam", ["deletion"], targets="top1")
    with pytest.raises(ValueError, match="does not fit"):
        as_sample({"image": torch.zeros(3, 4, 4), "mask": torch.zeros(5, 5)}, 0)
    with pytest.raises(ValueError, match="multi-hot"):
        as_sample({"image": torch.zeros(3, 4, 4), "label": [2, 3]}, 0)
    assert set(available_metrics()) == set(METRICS)


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="camkit")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


def test_cli_on_the_quokka_photo(tmp_path, capsys):
    out = tmp_path / "q"
    rc = run_cli(["evaluate", "--data", "quokka", "--methods", "gradcam",
                  "--metrics", "energy-box,energy-mask,pointing-box", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| gradcam |" in printed and str(out / "results.md") in printed
    row = {r["metric"]: r for r in csv.DictReader(open(out / "results.csv"))}
    box = float(row["energy-box"]["mean"])
    photo = quokka()
    box_share = ((photo.box[2] - photo.box[0]) * (photo.box[3] - photo.box[1])
                 / (photo.image.width * photo.image.height))
    assert box > box_share  # the pretrained model looks at the quokka more than a flat map
    assert float(row["pointing-box"]["mean"]) == 1.0


def test_cli_on_a_folder_with_a_class_folder_and_a_mask(tmp_path, capsys):
    photo = quokka()
    (tmp_path / "data" / "wombat").mkdir(parents=True)
    photo.image.resize((96, 64)).save(tmp_path / "data" / "loose.jpg")
    photo.image.resize((96, 64)).save(tmp_path / "data" / "wombat" / "q.png")
    Image.fromarray(photo.mask).resize((96, 64)).save(tmp_path / "data" / "wombat" / "q.mask.png")
    rc = run_cli(["evaluate", "--data", f"folder:{tmp_path / 'data'}", "--methods", "gradcam",
                  "--metrics", "energy-mask", "--targets", "label", "--out", str(tmp_path / "o"),
                  "--limit", "2"])
    document = json.loads((tmp_path / "o" / "results.json").read_text())
    assert rc == 0
    assert document["settings"]["skipped (no positive class)"] == 1
    assert document["per_sample"]["gradcam"]["pairs"] == [["q.png", 106]]
    assert document["rows"][0]["mean"] > 0


def test_auto_metrics_follow_the_regions_of_the_data():
    assert metrics_for("auto", ()) == list(DEFAULT_METRICS)
    assert metrics_for("auto", ("mask", "box"))[-4:] == [
        "energy-mask", "pointing-mask", "energy-box", "pointing-box"]
    assert metrics_for("deletion, insertion", ("mask",)) == ["deletion", "insertion"]


def test_imagenet_samples_spec():
    loaded = load_model()
    data, kinds = evaluation_data("imagenet-samples", loaded.preprocess, loaded.class_names)
    assert len(data) == 20 and kinds == ()
    item = data[0]
    assert item["image"].shape == (3, 224, 224) and 0 <= item["label"] < 1000


def test_synthetic_multilabel_tuples_with_class_masks(model):
    from camkit.data.synthetic import SyntheticMultiLabel

    data = SyntheticMultiLabel(4, image_size=16, num_classes=CLASSES, seed=3)
    results = evaluate(model, data, ["gradcam"], ["energy-mask", "energy-leak"], "features",
                       progress=False)
    positives = sum(int(data[i][1].sum()) for i in range(len(data)))
    assert not results.failures
    assert len(results.pairs["gradcam"]) == positives
    assert np.isfinite(results.values["gradcam"]["energy-mask"]).all()


def test_energy_leak_onto_a_named_partner(model):
    item = multilabel_data(3)[2]  # three objects
    first, second, third = item["label"].nonzero().flatten().tolist()
    results = evaluate(model, [item], ["gradcam"], ["energy-leak"], "features", progress=False,
                       metric_options={"energy-leak": {"partners": {first: third}}})
    x, targets = item["image"][None], torch.tensor([[first, second, third]])
    maps = camkit.explain(model, x, targets, ["gradcam"], "features")["gradcam"]
    expected = energy_share(maps[:, :1], item["mask"][third][None, None]).item()
    values = results.values["gradcam"]["energy-leak"]
    assert values[0] == pytest.approx(expected, rel=1e-5)
    assert np.isnan(values[1:]).all()  # no partner named for the other two classes


def test_one_progress_bar_counts_every_explanation(model, capsys, monkeypatch):
    """The run's bar counts (image, method) pairs; Score-CAM's own bar stays off."""
    harness = importlib.import_module("camkit.evaluate.harness")  # camkit.evaluate: the call
    updates: list[tuple[str, int, int]] = []
    real = harness.Progress

    class Recording(real):  # type: ignore[misc, valid-type]
        def update(self, n: int = 1) -> None:
            updates.append((self.desc, n, self.total))
            super().update(n)

    monkeypatch.setattr(harness, "Progress", Recording)
    items = multilabel_data()[:5]
    evaluate(model, items, ["gradcam", "scorecam"], ["average-drop"], "features",
             batch_size=2, progress=True)
    assert {total for _, _, total in updates} == {10}
    assert sum(n for _, n, _ in updates) == 10
    err = capsys.readouterr().err
    assert "evaluate" in err and "scorecam" not in err
