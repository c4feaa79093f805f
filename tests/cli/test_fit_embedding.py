"""``camkit fit-embedding`` and the ``--bank`` option of ``camkit explain``."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import camkit
from camkit.cli import explain, fit_embedding
from camkit.embedding import WeightBank
from camkit.zoo import load_model


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="camkit")
    sub = parser.add_subparsers(dest="command", required=True)
    fit_embedding.add_parser(sub)
    explain.add_parser(sub)
    return parser


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / name / f"{i}.png")
    return tmp_path


def test_fit_embedding_writes_a_bank_that_explain_uses(folder: Path, capsys) -> None:
    out = folder / "bank.safetensors"
    args = _parser().parse_args(["fit-embedding", str(folder / "data"), "--out", str(out),
                                 "--arch", "mobilenet_v3_small", "--random-init", "--triplets", "3",
                                 "--top-m", "20", "--no-progress"])
    assert args.run(args) == 0
    printed = capsys.readouterr().out
    assert "weight bank of 6 images from 2 classes" in printed
    bank = WeightBank.load(out)
    assert (len(bank), bank.num_channels, bank.top_m, bank.embedding_dim) == (6, 576, 20, 1000)
    assert bank.labels.tolist() == [0, 0, 0, 1, 1, 1]

    args = _parser().parse_args(["explain", "x.png", "--bank", str(out)])
    options = explain.trained_artifacts(args, ["embedding-gradcam"], torch.device("cpu"))
    loaded = load_model("mobilenet_v3_small", random_init=True)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    expl = camkit.explain(loaded.model, x, methods=["embedding-gradcam"], layer=bank.layer,
                          **options)
    assert expl["embedding-gradcam"].shape == (2, 1, 224, 224)


def test_explain_without_bank_adds_no_option() -> None:
    args = _parser().parse_args(["explain", "x.png"])
    assert explain.trained_artifacts(args, ["gradcam"], torch.device("cpu")) == {}
