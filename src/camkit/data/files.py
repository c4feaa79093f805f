"""Labelled image files for evaluation, and the evaluation data sets a spec names.

Items are ``{"image", "label", "name"[, "mask"][, "box"]}`` dicts of images preprocessed for
a model, the form :func:`camkit.evaluate.evaluate` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from camkit.data.images import Preprocess, load_image, to_tensor
from camkit.data.mosaic import ImageNetGrid
from camkit.data.samples import imagenet_samples, quokka, resize_annotated
from camkit.data.specs import DataSpec, folder_images, list_images, mask_path, parse_spec
from camkit.targets import class_index

EVALUATION_KINDS = ("folder", "list", "imagenet-samples", "imagenet-grid", "quokka")


class ImageFiles:
    """Image files with optional labels and masks, preprocessed on access:
    ``data[i] = {"image", "label", "name"[, "mask"]}``. A mask is the sibling file
    ``NAME.mask.png`` (non-zero pixels = object), resized exactly as the image."""

    def __init__(self, files: Sequence[tuple[Path, int | None]], preprocess: Preprocess) -> None:
        self.files, self.preprocess = list(files), preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.files[index]
        image = load_image(path)
        item: dict[str, Any] = {"image": self.preprocess(image), "label": label,
                                "name": path.name}
        if mask_path(path).exists():
            mask = np.asarray(np.asarray(load_image(mask_path(path))).any(axis=2))
            item["mask"] = self.preprocess.plan(image).mask(mask)
        return item

    def has_masks(self) -> bool:
        """Whether any image has a ``NAME.mask.png``."""
        return any(mask_path(path).exists() for path, _ in self.files)


def labelled_files(spec: DataSpec, class_names: Sequence[str]) -> list[tuple[Path, int | None]]:
    """The ``(path, label)`` of a ``folder:`` or ``list:`` spec; a folder's class sub-folders
    are resolved against ``class_names`` (by name or index); images outside them are
    unlabelled."""
    if spec.kind == "list":
        folder = Path(spec.args[0]).parent
        return [(folder / path, label) for path, label in list_images(spec.args[0], spec.text)]
    root = Path(spec.args[0])
    files = [(root / image.relative,
              None if image.folder is None else class_index(image.folder, class_names))
             for image in folder_images(root, spec.text)]
    if not files:
        raise ValueError(f"{spec.text}: no image files under {str(root)!r}")
    return files


def evaluation_data(spec: str, preprocess: Preprocess, class_names: Sequence[str]
                    ) -> tuple[Any, tuple[str, ...]]:
    """The data set a spec of :data:`EVALUATION_KINDS` names, for a model with
    ``preprocess`` and ``class_names``, and the region kinds it annotates (``"mask"``,
    ``"box"``, ``"cells"``)."""
    parsed = parse_spec(spec, EVALUATION_KINDS)
    if parsed.kind == "imagenet-grid":
        grids = ImageNetGrid(parsed.count(default=8), preprocess, class_names=class_names,
                             width=len(class_names))
        return grids, ("cells",)
    if parsed.kind == "imagenet-samples":
        return ImageFiles([(s.path, s.label) for s in imagenet_samples()], preprocess), ()
    if parsed.kind == "quokka":
        photo = resize_annotated(quokka(), preprocess.size, preprocess.crop_fraction,
                                 preprocess.resample)
        item = {"image": to_tensor(photo.image, preprocess.mean, preprocess.std),
                "mask": photo.mask, "box": torch.tensor(photo.box), "name": "quokka"}
        return [item], ("mask", "box")
    files = ImageFiles(labelled_files(parsed, class_names), preprocess)
    return files, ("mask",) if files.has_masks() else ()
