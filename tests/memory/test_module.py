"""Saving and loading memories: round trip, no unpickling, and every refusal."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from camkit.artifacts import write_safetensors
from camkit.memory import FORMAT_VERSION, BiasReducingMemory, mcam_raw_maps, read_config
from tests.memory_fixtures import random_memory, single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def saved(tmp_path: Path) -> tuple[BiasReducingMemory, Path]:
    memory = random_memory(temperature=0.3)
    memory.class_names = ["cat", "dog", "car", "tree", "sky"]
    memory.train_settings = {"epochs": 3, "lr": 1e-3}
    memory.metrics = {"history": [{"epoch": 1, "val_map": 0.5}], "skipped": []}
    return memory, memory.save(tmp_path / "memory.safetensors")


def header(path: Path) -> dict:
    return read_config(path)


def rewrite(path: Path, tensors: dict | None = None, **changes: object) -> None:
    """Rewrite a saved memory with a changed header (and optionally tensors)."""
    config = header(path) | changes
    write_safetensors(tensors if tensors is not None else random_memory().state_dict(), config,
                      path)


def test_round_trip_gives_identical_maps_and_config(saved: tuple) -> None:
    memory, path = saved
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    loaded = BiasReducingMemory.load(path)
    assert loaded.config() == memory.config()
    for name, tensor in memory.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    f = torch.rand(3, 6, 4, 5)
    targets = torch.tensor([[0, 1], [2, 3], [4, 4]])
    a, _ = mcam_raw_maps(memory, f, targets, torch.Generator().manual_seed(1))
    b, _ = mcam_raw_maps(loaded, f, targets, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_config_is_in_the_header_with_format_version(saved: tuple) -> None:
    _, path = saved
    config = read_config(path)
    assert config["format"] == "camkit.memory" and config["format_version"] == FORMAT_VERSION
    assert config["layer"] == "features" and config["channels"] == 6
    assert config["spatial_size"] == [4, 5] and config["input_size"] == [8, 10]
    assert config["class_names"][1] == "dog" and config["slots"] == 10
    assert config["addr_temperature"] == 0.3 and config["train_settings"]["epochs"] == 3


def test_load_never_unpickles_and_leaves_rng_alone(saved: tuple, monkeypatch) -> None:
    _, path = saved

    def forbidden(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("unpickling")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    state = torch.get_rng_state()
    BiasReducingMemory.load(path)
    assert torch.equal(state, torch.get_rng_state())


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no M-CAM memory file"):
        BiasReducingMemory.load(tmp_path / "absent.safetensors")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_file(saved: tuple, damage: str) -> None:
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(b"\x07not a safetensors file" if damage == "garbage"
                     else data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable M-CAM memory"):
        BiasReducingMemory.load(path)


def test_safetensors_without_camkit_header(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a camkit M-CAM memory"):
        BiasReducingMemory.load(path)


@pytest.mark.parametrize("changes, message", [
    ({"format_version": FORMAT_VERSION + 1}, "format version 2.*upgrade camkit"),
    ({"format_version": 0}, "format version 0"),
    ({"format": "camkit.weight-bank"}, "not 'camkit.memory'"),
    ({"channels": 7}, "tensor '.*' is .*float32 \\(7,\\)"),
    ({"slots": None}, "invalid memory config"),
])
def test_refuses_bad_headers(saved: tuple, changes: dict, message: str) -> None:
    _, path = saved
    rewrite(path, **changes)
    with pytest.raises(ValueError, match=message):
        BiasReducingMemory.load(path)


def test_refuses_missing_and_unexpected_tensors(saved: tuple) -> None:
    memory, path = saved
    tensors = dict(memory.state_dict())
    tensors["extra"] = tensors.pop("keys")
    rewrite(path, tensors)
    with pytest.raises(ValueError, match=r"missing \['keys'\], unexpected \['extra'\]"):
        BiasReducingMemory.load(path)


def test_refuses_wrong_dtype(saved: tuple) -> None:
    memory, path = saved
    rewrite(path, {k: v.double() for k, v in memory.state_dict().items()})
    with pytest.raises(ValueError, match="float64"):
        BiasReducingMemory.load(path)


def test_header_that_is_not_json(saved: tuple) -> None:
    memory, path = saved
    save_file({k: v.contiguous() for k, v in memory.state_dict().items()}, str(path),
              metadata={"camkit": "{not json"})
    with pytest.raises(ValueError, match="not valid JSON"):
        BiasReducingMemory.load(path)
    assert json.loads(json.dumps(memory.config()))  # the config itself is JSON-clean
