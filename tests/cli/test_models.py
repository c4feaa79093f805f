"""``camkit explain`` for any model: fine-tuned heads, class-name files, timm models by name,
folders, method options and devices, with images decoded batch by batch."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import camkit.viz.outputs
from camkit import api, zoo
from camkit.cli import main
from tests.models import TinyCNN


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = [folder / f"{i}.png" for i in range(3)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
    return paths


def test_a_fine_tuned_ten_class_network_with_class_names(photos, tmp_path, capsys):
    torch.manual_seed(0)
    weights = tmp_path / "cifar.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), weights)
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"class {c}" for c in "abcdefghij") + "\n")
    out = tmp_path / "o"
    rc = main(["explain", str(photos[0]), "--arch", "resnet18", "--weights", str(weights),
               "--class-names", str(names), "--target", "class g", "--out", str(out)])
    assert rc == 0 and "class " in capsys.readouterr().out
    with np.load(out / "0" / "maps.npz") as maps:
        assert int(maps["targets"][0]) == 6


def test_the_number_of_classes_comes_from_the_weights_or_is_given(tmp_path):
    weights = tmp_path / "w.pth"
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=7).state_dict(), weights)
    loaded = zoo.load_model("mobilenet_v3_small", weights)
    assert loaded.model.classifier[-1].out_features == 7
    assert loaded.class_names == [str(i) for i in range(7)]
    given = zoo.load_model("mobilenet_v3_small", random_init=True, num_classes=3,
                           class_names=["a", "b", "c"])
    assert given.class_names == ["a", "b", "c"]
    with pytest.raises(ValueError, match="2 class names for a network with 7 classes"):
        zoo.load_model("mobilenet_v3_small", weights, class_names=["a", "b"])


def test_timm_models_load_by_name(monkeypatch):
    """A stand-in for timm's two entry points camkit uses (timm is an optional package)."""
    created = []

    def create_model(name: str, pretrained: bool, num_classes: int = 1000) -> torch.nn.Module:
        created.append((name, pretrained, num_classes))
        return TinyCNN(classes=num_classes)

    config = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.25,) * 3,
              "crop_pct": 0.875, "interpolation": "bicubic"}
    timm = ModuleType("timm")
    timm.create_model = create_model  # type: ignore[attr-defined]
    timm.data = SimpleNamespace(resolve_data_config=lambda _args, model: config)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "timm", timm)
    loaded = zoo.load_model("timm:tiny_cnn", random_init=True, num_classes=4)
    assert created == [("tiny_cnn", False, 4)]
    assert (loaded.layer, loaded.input_size, loaded.arch) == ("features", 32, "timm:tiny_cnn")
    assert loaded.preprocess.crop_fraction == 0.875 and len(loaded.class_names) == 4


def test_timm_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ModuleNotFoundError, match="pip install timm"):
        zoo.load_model("timm:resnet18", random_init=True)


def test_explain_a_folder_with_options_on_a_device(photos, tmp_path, capsys):
    out = tmp_path / "o"
    rc = main(["explain", str(photos[0].parent), "--arch", "resnet18", "--random-init",
               "--methods", "scorecam", "--option", "max_channels=8", "--device", "cpu",
               "--out", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["0", "1", "2"]
    assert capsys.readouterr().out.count("→") == 3


def test_images_are_decoded_batch_by_batch(photos, tmp_path, monkeypatch):
    decoded, seen_at_explain = [], []
    load, explain = camkit.viz.outputs.load_image, api.explain
    monkeypatch.setattr(camkit.viz.outputs, "load_image",
                        lambda path: decoded.append(path) or load(path))
    monkeypatch.setattr(api, "explain",
                        lambda *a, **k: seen_at_explain.append(len(decoded)) or explain(*a, **k))
    rc = main(["explain", *map(str, photos), "--arch", "resnet18", "--random-init",
               "--batch-size", "1", "--out", str(tmp_path / "o")])
    assert rc == 0 and seen_at_explain == [1, 2, 3]
