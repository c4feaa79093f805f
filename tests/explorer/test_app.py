"""The page's handlers (no browser): every problem is a message, never an exception; the
command, the lazy ``camkit.serve`` export and the offline settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")

import camkit  # noqa: E402
from camkit.cli import build_parser, main  # noqa: E402
from camkit.explorer.app import (  # noqa: E402
    ALL_CLASSES,
    ALL_METHODS,
    BrowseHandlers,
    ExplainHandlers,
    build_app,
)
from camkit.explorer.explorer import Explorer  # noqa: E402


@pytest.fixture
def handlers(tiny_loaded, tmp_path: Path) -> ExplainHandlers:
    return ExplainHandlers(Explorer(tiny_loaded, tmp_path / "out", top_k=3))


def image_file(folder: Path) -> str:
    pixels = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    path = folder / "photo.png"
    Image.fromarray(pixels).save(path)
    return str(path)


def test_upload_then_switch_class_method_and_view(handlers, tmp_path: Path) -> None:
    key, choices, picture, message = handlers.open_file(
        image_file(tmp_path), "gradcam", None, "overlay", 0.5)
    assert len(choices) == 3 and [value for _, value in choices] == [0, 1, 2]
    assert picture.shape == (16, 16, 3) and "gradcam at `features`" in message
    other, text = handlers.show(key, 2, "layercam", "features", "map", 0.5)
    assert other.shape == picture.shape and not np.array_equal(other, picture)
    assert choices[2][0].split(" (")[0] in text


def test_problems_become_messages(handlers, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    key, choices, picture, message = handlers.open_file(str(broken), "gradcam", None,
                                                        "overlay", 0.5)
    assert (key, choices, picture) == (None, [], None) and message.startswith("**Problem:**")
    key = handlers.open_file(image_file(tmp_path), "gradcam", None, "overlay", 0.5)[0]
    picture, message = handlers.show(key, 0, "gradcam", "no.such.layer", "overlay", 0.5)
    assert picture is None and "no layer named 'no.such.layer'" in message
    assert handlers.show(None, 0, "gradcam", None, "overlay", 0.5)[0] is None
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"garbage")
    message, methods, layers = handlers.load_model("resnet18", str(weights))
    assert message.startswith("**Problem:**") and layers[0] == "features"  # the model stays
    assert handlers.load_model("no-such-arch", None)[0].startswith("**Problem:**")


def test_measure_and_download(handlers, tmp_path: Path) -> None:
    key = handlers.open_file(image_file(tmp_path), "gradcam", None, "overlay", 0.5)[0]
    table = handlers.measure(key, 0, "gradcam", None)
    assert table.splitlines()[0].startswith("| method | Average Drop % ↓")
    assert table.splitlines()[2].startswith("| gradcam |")
    files, message = handlers.download(key, None)
    assert [Path(f).name for f in files] == ["maps.npz", "report.html"]
    assert all(Path(f).resolve().is_relative_to(handlers.explorer.out.resolve())
               for f in files)


def test_browse_handlers(small_run, lite, tmp_path: Path) -> None:
    h = BrowseHandlers(Explorer(lite, tmp_path))
    assert h.page("score", True, ALL_METHODS, ALL_CLASSES, False)[1].startswith("Open")
    assert h.open(str(tmp_path / "nothing"), None).startswith("**Problem:**")
    assert h.open(str(small_run.results), str(small_run.evaluation)).startswith("Opened")
    sorts, methods, classes = h.choices()
    assert sorts[0] == "average-drop" and methods == [ALL_METHODS, "gradcam", "layercam"]
    gallery, text, rows, number = h.page("average-drop", True, "gradcam", ALL_CLASSES, False)
    assert len(gallery) == len(rows) == 12 and number == 0 and "of 12" in text
    assert h.page("average-drop", True, ALL_METHODS, ALL_CLASSES, False, 0, shift=-1)[3] == 0
    side, caption = h.compare(rows, 3)
    assert [c for _, c in side] == ["gradcam", "layercam"] and rows[3].id in caption
    assert h.compare(rows, None) == ([], "")


def test_build_app_is_offline_and_uploads_into_out(handlers) -> None:
    app = build_app(handlers.explorer)
    assert app.analytics_enabled is False
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert Path(os.environ["GRADIO_TEMP_DIR"]).is_relative_to(handlers.explorer.out.resolve())


def test_serve_command_and_lazy_export() -> None:
    args = build_parser().parse_args(["serve", "--results", "runs/x", "--port", "7000"])
    assert args.host == "127.0.0.1" and args.port == 7000 and args.results == "runs/x"
    assert callable(camkit.serve)
    code = ("import sys, camkit; assert 'gradio' not in sys.modules; "
            "assert callable(camkit.serve); assert 'gradio' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


def test_unknown_layer_stops_the_command_before_serving(capsys) -> None:
    assert main(["serve", "--arch", "resnet18", "--random-init", "--layer", "nope"]) == 2
    assert "no layer named 'nope'" in capsys.readouterr().err
