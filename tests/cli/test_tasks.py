"""``camkit explain`` on torchvision segmentation models and detectors (random weights, 64×64
inputs): the maps it writes are those of the library call with the same target."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import camkit
from camkit import zoo
from camkit.cli import main
from camkit.cli.explain import region_masks
from camkit.data.images import ResizePlan
from camkit.detection import BoxScoreTarget, DetectedBoxesTarget

SEGMENTER, DETECTOR = "lraspp_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn"
SIZE = 64


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """A 160×96 picture: a bright rectangle on a gradient."""
    pixels = np.zeros((96, 160, 3), dtype=np.uint8)
    pixels[..., 0] = np.linspace(0, 255, 160, dtype=np.uint8)
    pixels[20:70, 40:120] = (230, 200, 40)
    path = tmp_path / "scene.png"
    Image.fromarray(pixels).save(path)
    return path


def explain(photo: Path, out: Path, *args: str) -> int:
    torch.manual_seed(0)  # the random weights of --random-init
    return main(["explain", str(photo), "--random-init", "--input-size", str(SIZE),
                 "--out", str(out), *args])


def loaded_as_the_cli(arch: str, **head: int) -> zoo.LoadedModel:
    """The same random model the CLI built."""
    torch.manual_seed(0)
    return zoo.load_model(arch, random_init=True, **head)


def input_of(loaded: zoo.LoadedModel, photo: Path) -> torch.Tensor:
    """The photo as the CLI's ``--input-size`` network input, ``(1, 3, SIZE, SIZE)``."""
    return replace(loaded.preprocess, size=SIZE)(Image.open(photo).convert("RGB"))[None]


def test_box_regions_are_mapped_to_input_pixels() -> None:
    plan = ResizePlan.make(200, 100, SIZE)  # a plain resize: x × 0.32, y × 0.64
    region = region_masks([plan], (0, 50, 100, 100), None)[0]
    assert region.shape == (SIZE, SIZE) and int(region.sum()) == 32 * 32
    assert region[32:, :32].all()
    half = np.zeros((100, 200), dtype=bool)
    half[:, :100] = True
    assert torch.equal(region_masks([plan], None, half)[0],
                       region_masks([plan], (0, 0, 100, 100), None)[0])


def test_segmentation_class_inside_a_box_is_the_library_map(photo, tmp_path, capsys) -> None:
    assert explain(photo, tmp_path / "o", "--arch", SEGMENTER, "--target", "cat",
                   "--box", "40,20,120,70", "--methods", "gradcam,eigencam") == 0
    assert "scene.png" in capsys.readouterr().out
    folder = tmp_path / "o" / "scene"
    assert {p.name for p in folder.iterdir()} == {"gradcam.png", "eigencam.png", "grid.png",
                                                  "maps.npz"}
    written = np.load(folder / "maps.npz")
    assert written["gradcam"].shape == (1, SIZE, SIZE)
    loaded = loaded_as_the_cli(SEGMENTER)
    region = torch.zeros(1, SIZE, SIZE, dtype=torch.bool)
    region[:, 13:47, 16:48] = True  # the box × 0.4 (x) and × 0.667 (y)
    expl = camkit.explain(loaded.model, input_of(loaded, photo),
                          camkit.SemanticSegmentationTarget(8, region), ["gradcam"],
                          loaded.layer)
    np.testing.assert_allclose(written["raw_gradcam"], expl.raw["gradcam"][0].numpy(),
                               rtol=1e-4, atol=1e-6)


def test_segmentation_mask_file_and_predicted_region(photo, tmp_path, capsys) -> None:
    mask = tmp_path / "mask.png"
    white = Image.new("L", (160, 96))
    white.paste(255, (0, 0, 80, 96))
    white.save(mask)
    common = ["--arch", SEGMENTER, "--target", "8"]
    assert explain(photo, tmp_path / "m", *common, "--mask", str(mask)) == 0
    first = capsys.readouterr().out.split(": ")[1].split(" ")[0]  # the most predicted class
    assert explain(photo, tmp_path / "b", *common, "--box", "0,0,80,96") == 0
    by_mask, by_box = (np.load(tmp_path / d / "scene" / "maps.npz") for d in ("m", "b"))
    np.testing.assert_array_equal(by_mask["raw_gradcam"], by_box["raw_gradcam"])

    assert explain(photo, tmp_path / "p", "--arch", SEGMENTER, "--target", first) == 0
    loaded = loaded_as_the_cli(SEGMENTER)
    expl = camkit.explain(loaded.model, input_of(loaded, photo),
                          camkit.SemanticSegmentationTarget(loaded.class_names.index(first)),
                          ["gradcam"], loaded.layer)
    assert not expl.constant["gradcam"].any()
    written = np.load(tmp_path / "p" / "scene" / "maps.npz")
    np.testing.assert_allclose(written["raw_gradcam"], expl.raw["gradcam"][0].numpy(),
                               rtol=1e-4, atol=1e-6)


def test_detector_each_confident_box_one_map(photo, tmp_path, capsys) -> None:
    assert explain(photo, tmp_path / "o", "--arch", DETECTOR, "--num-classes", "3",
                   "--score-threshold", "0.3", "--max-boxes", "3") == 0
    folder = tmp_path / "o" / "scene"
    assert {p.name for p in folder.iterdir()} == {"gradcam-0.png", "gradcam-1.png",
                                                  "gradcam-2.png", "grid.png", "maps.npz"}
    written = np.load(folder / "maps.npz")
    loaded = loaded_as_the_cli(DETECTOR, num_classes=3)
    expl = camkit.explain(loaded.model, input_of(loaded, photo), DetectedBoxesTarget(0.3, 3),
                          ["gradcam"], loaded.layer)
    assert written["gradcam"].shape == (3, SIZE, SIZE)
    np.testing.assert_allclose(written["raw_gradcam"], expl.raw["gradcam"][0].numpy(),
                               rtol=1e-4, atol=1e-6)


def test_detector_a_given_box(photo, tmp_path) -> None:
    loaded = loaded_as_the_cli(DETECTOR, num_classes=3)
    x = input_of(loaded, photo)
    with torch.no_grad():
        found = loaded.model(x)[0]
    box, label = found["boxes"][0], int(found["labels"][0])  # a detection, in input pixels
    in_image = box / torch.tensor([0.4, 2 / 3, 0.4, 2 / 3])  # 160×96 → 64×64
    assert explain(photo, tmp_path / "o", "--arch", DETECTOR, "--num-classes", "3", "--box",
                   ",".join(f"{v:.5f}" for v in in_image.tolist()), "--target", str(label)) == 0
    written = np.load(tmp_path / "o" / "scene" / "maps.npz")
    expl = camkit.explain(loaded.model, x, BoxScoreTarget(box[None], torch.tensor([label])),
                          ["gradcam"], loaded.layer)
    assert written["gradcam"].shape == (1, SIZE, SIZE) and not expl.constant["gradcam"].any()
    np.testing.assert_allclose(written["raw_gradcam"], expl.raw["gradcam"][0].numpy(),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("args", "message"), [
    (["--arch", "resnet18", "--mask", "m.png"], "--mask is for segmentation models"),
    (["--arch", SEGMENTER, "--score-threshold", "0.2"], "--score-threshold is for detection"),
    (["--arch", SEGMENTER], "--target pred has no meaning for a segmentation model"),
    (["--arch", DETECTOR, "--box", "1,1,9,9"], "the class of the --box"),
    (["--arch", SEGMENTER, "--target", "1", "--box", "1,1,9,9", "--mask", "m.png"],
     "not both"),
    (["--arch", DETECTOR, "--num-classes", "3", "--score-threshold", "0.99"],
     "no detection scores at least 0.99"),
])
def test_task_flags_give_clear_errors(photo, tmp_path, capsys, args, message) -> None:
    assert explain(photo, tmp_path / "o", *args) == 2
    assert message in capsys.readouterr().err


def test_a_box_must_be_four_ordered_numbers(photo, tmp_path, capsys) -> None:
    for text in ("9,1,1,9", "1,2,3"):
        with pytest.raises(SystemExit):
            explain(photo, tmp_path / "o", "--arch", SEGMENTER, "--box", text)
    assert "X0 < X1" in capsys.readouterr().err
