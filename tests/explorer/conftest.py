"""Fixtures of the explorer's tests: a tiny model as a loaded model, and a small real run
(``explain-dataset`` on six photos with two methods, and an evaluation of them)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

import camkit
from camkit.batch import explain_dataset
from camkit.data import imagenet_samples
from camkit.data.files import evaluation_data
from camkit.data.images import Preprocess
from camkit.zoo import LoadedModel, load_model
from tests.models import TinyCNN

RUN_METHODS = ("gradcam", "layercam")
RUN_METRICS = ("average-drop", "increase-in-confidence")


@pytest.fixture
def tiny_loaded() -> LoadedModel:
    """TinyCNN (5 classes) on 16 × 16 inputs, layer ``features``."""
    torch.manual_seed(0)
    return LoadedModel(TinyCNN().eval(), Preprocess(16, crop_fraction=None),
                       [f"class {i}" for i in range(5)], "features", 16, "tiny")


class SmallRun(NamedTuple):
    images: Path
    results: Path
    evaluation: Path


@pytest.fixture(scope="session")
def lite() -> LoadedModel:
    return load_model()


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory, lite: LoadedModel) -> SmallRun:
    """Six real photos explained by the pretrained EfficientNet-Lite0 for their top-2
    classes, and evaluated (Average Drop, Increase in Confidence) for their predicted one."""
    root = tmp_path_factory.mktemp("small-run")
    images = root / "images"
    images.mkdir()
    for sample in imagenet_samples()[:6]:
        shutil.copy(sample.path, images / sample.path.name)
    results = root / "results"
    explain_dataset(f"folder:{images}", results, RUN_METHODS, target="top2", map_size=56,
                    workers=0, progress=False)
    data, _ = evaluation_data(f"folder:{images}", lite.preprocess, lite.class_names)
    evaluated = camkit.evaluate(lite.model, data, RUN_METHODS, RUN_METRICS, lite.layer,
                                targets="predicted", progress=False)
    evaluated.save(root / "evaluation")
    return SmallRun(images, results, root / "evaluation")
