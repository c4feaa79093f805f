"""``camkit train-memory``: the sub-command trains, saves and reports, with a stand-in zoo."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import camkit.zoo
from camkit.data.multilabel import to_unit_tensor
from camkit.memory import BiasReducingMemory
from camkit.memory.cli import add_train_memory_parser
from tests.memory_fixtures import ShapeNet, single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def zoo(monkeypatch) -> list[tuple]:
    calls: list[tuple] = []

    def load_model(arch: str, weights: str | None = None, *, random_init: bool = False):
        calls.append((arch, weights, random_init))
        torch.manual_seed(0)
        return SimpleNamespace(model=ShapeNet(classes=3, channels=4), layer="features",
                               preprocess=lambda im: to_unit_tensor(im.resize((16, 16))),
                               class_names=["x", "y", "z"])

    monkeypatch.setattr(camkit.zoo, "load_model", load_model)
    return calls


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="camkit")
    add_train_memory_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_train_memory_from_folders(zoo, tmp_path: Path, capsys) -> None:
    for k, name in enumerate(["healthy", "sick"]):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 24), (90 * k, 40 * i, 9)).save(folder / f"{i}.png")
    (tmp_path / "data" / "sick" / "broken.png").write_bytes(b"no")
    out = tmp_path / "memory.safetensors"
    args = parse(["train-memory", "--data", f"folders:{tmp_path / 'data'}", "--out", str(out),
                  "--arch", "resnet18", "--random-init", "--epochs", "2", "--slots", "3",
                  "--batch-size", "2", "--checkpoint-dir", str(tmp_path / "ckpt"), "--quiet",
                  "--val-data", f"folders:{tmp_path / 'data'}", "--device", "cpu"])
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
                  "--epochs", "1", "--layer", "features.2", "--cache", "none", "--quiet"])
    assert args.slots is None and args.lr == 1e-3 and args.addr_temperature == 1.0
    assert args.run(args) == 0
    memory = BiasReducingMemory.load(out)
    assert memory.num_slots == 8 and memory.layer == "features.2"
    assert memory.train_settings["cache"] is None


def test_bad_data_spec(zoo, tmp_path: Path) -> None:
    args = parse(["train-memory", "--data", "imagenet:x", "--out", str(tmp_path / "m"),
                  "--arch", "a", "--quiet"])
    with pytest.raises(ValueError, match="cannot read data spec"):
        args.run(args)
