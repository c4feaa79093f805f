"""The ``camkit`` command, run in-process through ``camkit.cli.main``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from camkit.cli import main
from camkit.data import quokka


@pytest.fixture
def photos(tmp_path):
    image = quokka().image
    paths = [tmp_path / "quokka.jpg", tmp_path / "small.png"]
    image.save(paths[0])
    image.resize((120, 80)).convert("L").save(paths[1])
    return paths


def test_methods_lists_every_method(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "gradcam++" in out and "guided-backprop" in out


def test_explain_writes_overlays_grid_and_maps(photos, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["explain", *map(str, photos), "--methods", "gradcam,gradcam++",
               "--target", "wombat", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "quokka.jpg" in printed and "%" in printed
    for stem in ("quokka", "small"):
        folder = out / stem
        assert {p.name for p in folder.iterdir()} == {
            "gradcam.png", "gradcampp.png", "grid.png", "maps.npz"}
        maps = np.load(folder / "maps.npz")
        assert maps["gradcam"].shape == (1, 224, 224)
        assert maps["raw_gradcam"].shape == (1, 7, 7)
        assert int(maps["targets"][0]) == 106  # wombat
        assert Image.open(folder / "gradcam.png").size == (224, 224)


def test_unreadable_file_is_reported_and_the_rest_explained(photos, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    rc = main(["explain", str(text), str(photos[0]), "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert rc == 1
    assert "notes.txt" in captured.err
    assert (tmp_path / "o" / "quokka" / "grid.png").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--target", "not-a-class-name"], "not-a-class-name"),
    (["--methods", "gradcan"], "Did you mean 'gradcam'"),
    (["--layer", "_bn9"], "no layer named"),
    (["--target", "1000"], "1000"),
])
def test_bad_arguments_give_clear_errors(photos, tmp_path, capsys, args, message):
    rc = main(["explain", str(photos[0]), "--out", str(tmp_path / "o"), *args])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_torchvision_architecture_with_local_weights(photos, tmp_path):
    weights = tmp_path / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    rc = main(["explain", str(photos[0]), "--arch", "resnet18", "--weights", str(weights),
               "--methods", "cam,gradcam", "--out", str(tmp_path / "o")])
    assert rc == 0
    assert (tmp_path / "o" / "quokka" / "cam.png").exists()
