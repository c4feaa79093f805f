"""Every expected failure of the ``camkit`` command is one line ``camkit: error: ...`` saying
what to do (exit status 2); one bad image is skipped and reported by every command (exit 1)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from camkit import artifacts
from camkit.cli import main
from camkit.data import quokka
from camkit.memory import BiasReducingMemory
from camkit.memory.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_NAME

FAST = ["--arch", "resnet18", "--random-init", "--methods", "gradcam"]


def bomb_png(path: Path, side: int = 20000) -> Path:
    """A tiny PNG whose header declares ``side × side`` pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    quokka().image.resize((64, 48)).save(path)
    return path


def one_error_line(capsys: pytest.CaptureFixture[str], *parts: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("camkit: error: ") and "\n" not in err and "Traceback" not in err
    for part in parts:
        assert part in err
    return err


@pytest.mark.parametrize("size", ["-1", "0"])
def test_a_batch_size_below_one_is_a_usage_error(photo, tmp_path, size, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["explain", str(photo), *FAST, "--out", str(tmp_path / "o"), "--batch-size", size])
    assert exit_.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_a_decompression_bomb_is_skipped_by_explain(photo, tmp_path, capsys):
    bomb = bomb_png(tmp_path / "bomb.png")
    assert main(["explain", str(bomb), str(photo), *FAST, "--out", str(tmp_path / "o")]) == 1
    assert "camkit: skipped" in capsys.readouterr().err
    assert (tmp_path / "o" / "photo" / "grid.png").is_file()


def test_a_decompression_bomb_is_skipped_by_explain_dataset(photo, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    photo.rename(images / "photo.png")
    bomb_png(images / "bomb.png")
    argv = ["explain-dataset", "--data", str(images), "--out", str(tmp_path / "o"), *FAST,
            "--workers", "0", "--no-progress"]
    assert main(argv) == 1
    assert "skipped bomb.png" in capsys.readouterr().err
    assert main(argv) == 1  # the rerun resumes past it


def test_fit_embedding_skips_an_empty_jpeg(tmp_path, capsys):
    for k, name in enumerate(("cat", "dog")):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), (100 * k, 50 * i, 7)).save(
                tmp_path / "data" / name / f"{i}.png")
    (tmp_path / "data" / "dog" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "bank.safetensors"
    rc = main(["fit-embedding", str(tmp_path / "data"), "--out", str(out), "--arch",
               "mobilenet_v3_small", "--random-init", "--triplets", "2", "--top-m", "4",
               "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 1 and "skipped" in captured.err and "empty.jpg" in captured.err
    assert "weight bank of 4 images" in captured.out and out.is_file()


def test_a_layer_the_forward_pass_never_reaches(photo, tmp_path, capsys):
    rc = main(["explain", str(photo), "--arch", "googlenet", "--random-init", "--layer",
               "aux1.conv", "--out", str(tmp_path / "o")])
    assert rc == 2
    one_error_line(capsys, "not reached", "choose a layer")


def test_out_naming_a_file(photo, tmp_path, capsys):
    (tmp_path / "taken").write_text("mine")
    assert main(["explain", str(photo), *FAST, "--out", str(tmp_path / "taken")]) == 2
    one_error_line(capsys, "is a file; give a folder")


def test_a_cuda_device_without_a_gpu(photo, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["explain", str(photo), *FAST, "--device", "cuda", "--out",
                 str(tmp_path / "o")]) == 2
    one_error_line(capsys, "no CUDA GPU", "--device cpu")


def memory_file(tmp_path: Path, header: object = None, poison: bool = False) -> Path:
    memory = BiasReducingMemory(512, (7, 7), num_classes=2, layer="layer4")
    if poison:
        with torch.no_grad():
            memory.keys[0, 0] = float("nan")
    path = memory.save(tmp_path / "memory.safetensors")
    if header is not None:
        tensors, _ = artifacts.read_safetensors(path, "memory")
        from safetensors.torch import save_file

        save_file(tensors, str(path), metadata={"camkit": json.dumps(header)})
    return path


@pytest.mark.parametrize("case", ["list header", "huge slots", "nan entries"])
def test_a_damaged_memory_file(photo, tmp_path, capsys, case):
    if case == "list header":
        path = memory_file(tmp_path, header=[1, 2])
    elif case == "huge slots":
        good = BiasReducingMemory(512, (7, 7), num_classes=2, layer="layer4").config()
        path = memory_file(tmp_path, header={"format": "camkit.memory", "format_version": 1,
                                             **good, "slots": 1e12})
    else:
        path = memory_file(tmp_path, poison=True)
    rc = main(["explain", str(photo), "--arch", "resnet18", "--random-init", "--methods",
               "mcam", "--memory", str(path), "--out", str(tmp_path / "o")])
    assert rc == 2
    one_error_line(capsys, str(path))


def test_a_malformed_training_checkpoint(tmp_path, capsys):
    checkpoint = tmp_path / "ckpt" / CHECKPOINT_NAME
    artifacts.write_safetensors({"x": torch.zeros(1)}, {"format": CHECKPOINT_FORMAT,
                                                         "epoch": "two"}, checkpoint)
    rc = main(["train-memory", "--data", "synthetic:4", "--out", str(tmp_path / "m"),
               "--arch", "resnet18", "--random-init", "--checkpoint-dir",
               str(tmp_path / "ckpt"), "--no-progress"])
    assert rc == 2
    one_error_line(capsys, "not an intact memory training checkpoint", "--no-resume")


def test_a_whole_pickled_model_is_one_clear_line(photo, tmp_path, capsys):
    weights = tmp_path / "model.pth"
    torch.save(torchvision.models.resnet18(), weights)
    assert main(["explain", str(photo), "--arch", "resnet18", "--weights", str(weights),
                 "--out", str(tmp_path / "o")]) == 2
    one_error_line(capsys, "pickled", "state_dict()")


@pytest.mark.parametrize(("args", "parts"), [
    (["--memory", "m.safetensors"], ("--memory is used by --methods mcam or mcam-gradcam only",)),
    (["--methods", "mcam"], ("--methods mcam needs --memory FILE", "train-memory")),
    (["--option", "max_channels=4"], ("--option max_channels", "they take: no options")),
])
def test_messages_speak_the_clis_language(photo, tmp_path, capsys, args, parts):
    rc = main(["explain", str(photo), *FAST, "--out", str(tmp_path / "o"), *args])
    assert rc == 2
    one_error_line(capsys, *parts)
