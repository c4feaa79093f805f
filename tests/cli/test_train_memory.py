"""``camkit train-memory``: the sub-command trains, saves and reports, with a stand-in zoo."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import camkit.cli
import camkit.zoo
from camkit.cli.train_memory import add_parser
from camkit.data import Preprocess
from camkit.memory import BiasReducingMemory
from tests.memory_fixtures import ShapeNet, single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def zoo(monkeypatch) -> list[tuple]:
    calls: list[tuple] = []

    def load_model(arch: str, weights: str | None = None, *, random_init: bool = False):
        calls.append((arch, weights, random_init))
        torch.manual_seed(0)
        return camkit.zoo.LoadedModel(model=ShapeNet(classes=3, channels=4), layer="features",
                                      preprocess=Preprocess(16, (0.0,) * 3, (1.0,) * 3, None),
                                      class_names=["x", "y", "z"], input_size=16, arch=arch)

    monkeypatch.setattr(camkit.zoo, "load_model", load_model)
    return calls


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="camkit")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def write_folders(root: Path) -> None:
    """Two classes of three small images, one folder per class."""
    for k, name in enumerate(["healthy", "sick"]):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 24), (90 * k, 40 * i, 9)).save(folder / f"{i}.png")


def test_train_memory_from_folders(zoo, tmp_path: Path, capsys) -> None:
    write_folders(tmp_path / "data")
    (tmp_path / "data" / "sick" / "broken.png").write_bytes(b"no")
    out = tmp_path / "memory.safetensors"
    args = parse(["train-memory", "--data", f"folder:{tmp_path / 'data'}", "--out", str(out),
                  "--arch", "resnet18", "--random-init", "--epochs", "2", "--slots", "3",
                  "--batch-size", "2", "--checkpoint-dir", str(tmp_path / "ckpt"), "--no-progress",
                  "--val-data", f"folder:{tmp_path / 'data'}", "--device", "cpu"])
    with pytest.warns(RuntimeWarning, match="broken.png"):
        assert args.run(args) == 0
    assert zoo == [("resnet18", None, True)]
    memory = BiasReducingMemory.load(out)
    assert memory.class_names == ["healthy", "sick"] and memory.num_slots == 3
    assert memory.layer == "features" and memory.input_size == (16, 16)
    assert memory.spatial_size == (2, 2) and len(memory.metrics["history"]) == 2
    assert (tmp_path / "ckpt" / "memory-checkpoint.safetensors").is_file()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "saved" in captured.err and "1 image(s) skipped" in captured.err


def test_train_memory_synthetic_defaults(zoo, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    args = parse(["train-memory", "--data", "synthetic:8", "--out", str(out), "--arch", "a",
                  "--epochs", "1", "--layer", "features.2", "--cache", "none", "--no-progress"])
    assert args.slots is None and args.lr == 1e-3 and args.addr_temperature == 1.0
    assert args.run(args) == 0
    memory = BiasReducingMemory.load(out)
    assert memory.num_slots == 8 and memory.layer == "features.2"
    assert memory.train_settings["cache"] is None


def test_bad_data_spec(zoo, tmp_path: Path) -> None:
    args = parse(["train-memory", "--data", "imagenet:x", "--out", str(tmp_path / "m"),
                  "--arch", "a", "--no-progress"])
    with pytest.raises(ValueError, match="unknown data spec"):
        args.run(args)


def test_explain_uses_the_trained_memory(zoo, tmp_path: Path, capsys) -> None:
    memory_file = tmp_path / "memory.safetensors"
    write_folders(tmp_path / "data")
    assert camkit.cli.main(["train-memory", "--data", f"folder:{tmp_path / 'data'}", "--out",
                            str(memory_file), "--arch", "a", "--epochs", "1", "--no-progress"]) == 0
    image = tmp_path / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    argv = ["explain", str(image), "--arch", "a", "--methods", "gradcam,mcam",
            "--memory", str(memory_file), "--out", str(tmp_path / "out")]
    assert camkit.cli.main(argv) == 0
    with np.load(tmp_path / "out" / "photo" / "maps.npz") as maps:
        assert maps["mcam"].shape == maps["gradcam"].shape == (1, 16, 16)
        assert 0 <= maps["mcam"].min() and maps["mcam"].max() <= 1
    assert camkit.cli.main([*argv[:-4], "--out", str(tmp_path / "o2")]) == 2  # no --memory
    assert "--methods mcam needs --memory FILE" in capsys.readouterr().err


def test_with_a_memory_every_method_explains_the_memorys_classes(zoo, tmp_path, capsys):
    """One target vocabulary per run: the memory's (its head follows the network's layer)."""
    memory_file = tmp_path / "memory.safetensors"
    write_folders(tmp_path / "data")
    assert camkit.cli.main(["train-memory", "--data", f"folder:{tmp_path / 'data'}", "--out",
                            str(memory_file), "--arch", "a", "--epochs", "1",
                            "--no-progress"]) == 0
    image = tmp_path / "photo.png"
    Image.new("RGB", (20, 24), (90, 40, 9)).save(image)
    base = ["explain", str(image), "--arch", "a", "--methods", "gradcam,mcam", "--memory",
            str(memory_file)]
    assert camkit.cli.main([*base, "--target", "sick", "--out", str(tmp_path / "o")]) == 0
    with np.load(tmp_path / "o" / "photo" / "maps.npz") as maps:
        assert int(maps["targets"][0]) == 1  # "sick", for Grad-CAM and M-CAM alike
    capsys.readouterr()
    assert camkit.cli.main([*base, "--target", "z", "--out", str(tmp_path / "o2")]) == 2
    assert "no class named 'z'" in capsys.readouterr().err  # a network class, not the memory's


def test_train_memory_says_when_it_resumes(zoo, tmp_path, capsys):
    argv = ["train-memory", "--data", "synthetic:4", "--out", str(tmp_path / "m.safetensors"),
            "--arch", "a", "--layer", "features.2", "--checkpoint-dir", str(tmp_path / "ck"),
            "--no-progress", "--epochs"]
    assert camkit.cli.main([*argv, "1"]) == 0
    assert "resuming" not in capsys.readouterr().err
    assert camkit.cli.main([*argv, "2"]) == 0
    err = capsys.readouterr().err
    assert "resuming from" in err and "after epoch 1" in err
