"""Sample images read from the installed imgaug and foolbox packages."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest

from camkit.data import samples
from camkit.data.images import ResizePlan
from camkit.data.samples import (
    AnnotatedImage,
    foolbox_samples,
    imagenet_samples,
    quokka,
    resize_annotated,
)

FACE = [(248, 205), (366, 194), (313, 270)]  # eyes and nose in quokka_annotations.json


@pytest.fixture(scope="module")
def quokka_sample() -> AnnotatedImage:
    return quokka()


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _inside_box(mask: np.ndarray, box: tuple[float, ...]) -> float:
    x1, y1, x2, y2 = (round(v) for v in box)
    return mask[y1:y2, x1:x2].sum() / mask.sum()


def test_quokka_box_and_mask(quokka_sample: AnnotatedImage) -> None:
    q = quokka_sample
    assert q.image.mode == "RGB" and q.image.size == (960, 643)
    assert q.label == "animal"
    x1, y1, x2, y2 = q.box
    assert 0 <= x1 < x2 <= q.image.width and 0 <= y1 < y2 <= q.image.height
    assert q.mask.shape == (643, 960) and q.mask.dtype == bool
    box_area = (x2 - x1) * (y2 - y1)
    assert 0.6 < q.mask.sum() / box_area < 0.95  # a quokka fills most of its box
    assert _inside_box(q.mask, q.box) > 0.99
    # The polygon and the box were annotated separately but agree within a few pixels.
    assert np.abs(np.subtract(_mask_box(q.mask), q.box)).max() <= 6
    assert all(q.mask[y, x] for x, y in FACE)


@pytest.mark.parametrize("crop_fraction", [None, 0.875])
def test_resize_keeps_box_and_mask_consistent(
    quokka_sample: AnnotatedImage, crop_fraction: float | None
) -> None:
    small = resize_annotated(quokka_sample, 224, crop_fraction)
    assert small.image.size == (224, 224) and small.mask.shape == (224, 224)
    assert all(0 <= v <= 224 for v in small.box)
    assert _inside_box(small.mask, small.box) > 0.98
    # The box is still the mask's box, scaled (and cropped) the same way.
    assert np.abs(np.subtract(_mask_box(small.mask), small.box)).max() <= 3
    # The annotated eyes and nose, moved by the same transform, are still on the quokka.
    plan = ResizePlan.make(960, 643, 224, crop_fraction)
    for x, y in FACE:
        px, py, _, _ = plan.box((x, y, x, y))
        assert small.mask[int(py), int(px)]


def test_plain_resize_keeps_the_mask_fraction(quokka_sample: AnnotatedImage) -> None:
    small = resize_annotated(quokka_sample, 112)
    assert small.mask.mean() == pytest.approx(quokka_sample.mask.mean(), abs=0.01)


def test_imagenet_samples() -> None:
    files = imagenet_samples()
    assert len(files) == 20
    assert [f.position for f in files] == list(range(20))
    assert all(0 <= f.label < 1000 and f.path.is_file() for f in files)
    assert files[0].path.name == "imagenet_00_243.jpg" and files[0].label == 243


@pytest.mark.parametrize(
    ("dataset", "classes"), [("cifar10", 10), ("cifar100", 100), ("mnist", 10)]
)
def test_other_foolbox_samples(dataset: str, classes: int) -> None:
    files = foolbox_samples(dataset)
    assert len(files) == 20 and all(0 <= f.label < classes for f in files)
    assert all(f.path.name.startswith(f"{dataset}_") for f in files)


def test_unknown_foolbox_dataset() -> None:
    with pytest.raises(ValueError, match="cifar10"):
        foolbox_samples("cifar")


def test_missing_package_tells_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(samples.importlib.metadata, "distribution", missing)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps foolbox==3\.3\.4"):
        imagenet_samples()
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps imgaug==0\.4\.0"):
        quokka()
