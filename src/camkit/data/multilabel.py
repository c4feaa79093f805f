"""Multi-label image data sets for training M-CAM memories (and for evaluation).

The protocol is a map-style data set whose items are ``(image tensor, multi-hot labels)``:
``image`` is whatever the ``transform`` makes of the RGB image that
:func:`camkit.data.images.load_image` reads (EXIF orientation applied, grey, 16-bit and
transparent images converted; default transform: a ``(3, H, W)`` float32 tensor in
[0, 1]), and ``labels`` is a float32 ``(n_cls,)`` tensor of 0/1.

Ready loaders (all return a :class:`MultiLabelImages`):

- :meth:`MultiLabelImages.from_coco`: COCO instances JSON + image folder (own parser, no
  ``pycocotools`` needed), labels from the annotations, boxes kept;
- :meth:`MultiLabelImages.from_csv`: one row per image, labels joined by ``|`` (NIH
  ChestX-ray14's ``Data_Entry_2017.csv``; ``"No Finding"`` means no positive);
- :meth:`MultiLabelImages.from_vindr`: one row per finding (VinDr-CXR ``train.csv``), rows
  aggregated per image into multi-hot labels, boxes kept;
- :meth:`MultiLabelImages.from_folders`: one folder per class (retinal OCT, EndoTect);
  single-label, so one-hot.

Unreadable images: with ``on_error="raise"`` a missing file is refused when the data set is
built and a corrupt one when it is read (:class:`ImageLoadError`, with the path). With
``on_error="skip"`` missing files are left out when the data set is built and a corrupt image
is returned as a :class:`Skipped` record instead of a sample; :func:`collate_skipping` drops
those from a batch and hands them on, and ``.skipped`` lists every one (path and reason).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .images import load_image, to_tensor
from .specs import folder_images, parse_spec

Transform = Callable[[Image.Image], Any]
ON_ERROR = ("skip", "raise")
LOAD_ERRORS = (OSError, ValueError, Image.DecompressionBombError)


class MultiLabelDataset(Protocol):
    """What training accepts: ``len(data)`` and ``data[i] -> (image, multi-hot labels, ...)``
    (extra items, such as masks, are ignored)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Any, ...]: ...


@dataclass(frozen=True)
class Skipped:
    """An image that could not be used: its path and why."""

    path: str
    reason: str


class ImageLoadError(OSError):
    """An image could not be opened or decoded (``on_error="raise"``)."""


def to_unit_tensor(image: Image.Image) -> Tensor:
    """The default transform: PIL RGB → ``(3, H, W)`` float32 in [0, 1], not normalised."""
    return to_tensor(image, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def collate_skipping(batch: Sequence[Any]) -> tuple[Tensor | None, Tensor | None, list[Skipped]]:
    """DataLoader ``collate_fn`` for training: drops :class:`Skipped` items and stacks the
    rest, returning ``(images (b, ...) or None, labels (b, n_cls) or None, skipped)``; items
    beyond the first two (masks, boxes) are dropped."""
    skipped = [item for item in batch if isinstance(item, Skipped)]
    good = [item for item in batch if not isinstance(item, Skipped)]
    if not good:
        return None, None, skipped
    images = torch.stack([torch.as_tensor(item[0]) for item in good])
    labels = torch.stack([torch.as_tensor(item[1], dtype=torch.float32) for item in good])
    return images, labels, skipped


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def _multi_hot(rows: Sequence[Iterable[int]], num_classes: int) -> Tensor:
    """``(len(rows), n_cls)`` float32 with a 1 at each listed class index of each row."""
    labels = torch.zeros(len(rows), num_classes)
    for i, indices in enumerate(rows):
        labels[i, list(indices)] = 1.0
    return labels


class MultiLabelImages(Dataset):
    """Images on disk with multi-hot labels (and optionally boxes).

    Args:
        paths: one image path per sample.
        labels: ``(n, n_cls)`` multi-hot float32.
        class_names: ``n_cls`` names.
        transform: PIL RGB image → tensor; default :func:`to_unit_tensor`.
        on_error: ``"skip"`` or ``"raise"`` (see the module docstring).
        boxes: per sample a ``(m, 5)`` float32 tensor of ``(class, x_min, y_min, x_max, y_max)``
            in pixels, or ``None``.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Tensor,
        class_names: Sequence[str],
        transform: Transform | None = None,
        on_error: str = "skip",
        boxes: Sequence[Tensor] | None = None,
    ) -> None:
        _check_on_error(on_error)
        if len(paths) != len(labels) or (boxes is not None and len(boxes) != len(paths)):
            raise ValueError("paths, labels and boxes must have one entry per sample")
        exists = [Path(p).is_file() for p in paths]
        missing = [str(p) for p, ok in zip(paths, exists, strict=True) if not ok]
        if missing and on_error == "raise":
            raise FileNotFoundError(f"{len(missing)} of {len(paths)} images are missing, e.g. "
                                    f"{missing[:3]}; pass on_error='skip' to leave them out")
        keep = [i for i, ok in enumerate(exists) if ok]
        self.paths = [Path(paths[i]) for i in keep]
        self.labels = labels[keep].float()
        self.boxes = None if boxes is None else [boxes[i] for i in keep]
        self.class_names = list(class_names)
        self.transform = transform or to_unit_tensor
        self.on_error = on_error
        self.skipped = [Skipped(p, "missing file") for p in missing]

    @property
    def num_classes(self) -> int:
        """``n_cls``."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, Tensor] | Skipped:
        path = self.paths[index]
        try:
            image = load_image(path)
        except LOAD_ERRORS as err:
            if self.on_error == "raise":
                raise ImageLoadError(f"cannot load image {path}: {err}") from err
            record = Skipped(str(path), f"{type(err).__name__}: {err}")
            self.skipped.append(record)
            return record
        return self.transform(image), self.labels[index]

    @classmethod
    def from_coco(cls, annotation_file: str | Path, image_dir: str | Path,
                  transform: Transform | None = None, on_error: str = "skip",
                  include_crowd: bool = True) -> MultiLabelImages:
        """COCO instances JSON (``images``, ``categories``, ``annotations``) + image folder.

        Classes are the categories in increasing id order (COCO's 80 ids are not
        contiguous); an image's labels are the categories of its annotations; boxes
        (``bbox = [x, y, w, h]``) become ``(class, x_min, y_min, x_max, y_max)``. Images
        without annotations are kept as all-negative samples."""
        data = _read_json(annotation_file)
        for key in ("images", "categories", "annotations"):
            if not isinstance(data.get(key), list):
                raise ValueError(f"{annotation_file} is not a COCO instances file (no {key!r} "
                                 "list)")
        categories = sorted(data["categories"], key=lambda c: c["id"])
        index_of = {c["id"]: i for i, c in enumerate(categories)}
        row_of = {img["id"]: i for i, img in enumerate(data["images"])}
        boxes: list[list[list[float]]] = [[] for _ in row_of]
        for ann in data["annotations"]:
            if ann.get("iscrowd", 0) and not include_crowd:
                continue
            if ann.get("image_id") not in row_of or ann.get("category_id") not in index_of:
                raise ValueError(f"{annotation_file}: annotation {ann.get('id')!r} refers to an "
                                 "image or category that the file does not list")
            x, y, w, h = ann.get("bbox", [math.nan] * 4)
            boxes[row_of[ann["image_id"]]].append([index_of[ann["category_id"]], x, y, x + w,
                                                   y + h])
        names = [c["name"] for c in categories]
        return cls.from_boxes([Path(image_dir) / img["file_name"] for img in data["images"]],
                              boxes, names, transform, on_error)

    @classmethod
    def from_boxes(cls, paths: Sequence[Path], boxes: Sequence[Sequence[Sequence[float]]],
                   class_names: Sequence[str], transform: Transform | None = None,
                   on_error: str = "skip") -> MultiLabelImages:
        """Per image a list of ``[class, x_min, y_min, x_max, y_max]`` rows (coordinates may
        be NaN for image-level labels); the labels are the classes that occur."""
        tensors = [torch.tensor(rows, dtype=torch.float32).reshape(-1, 5) for rows in boxes]
        labels = _multi_hot([t[:, 0].long().tolist() for t in tensors], len(class_names))
        return cls(paths, labels, class_names, transform, on_error, tensors)

    @classmethod
    def from_csv(cls, csv_file: str | Path, image_dir: str | Path,
                 transform: Transform | None = None, on_error: str = "skip", *,
                 image_column: str = "Image Index", labels_column: str = "Finding Labels",
                 separator: str = "|", negative: str = "No Finding",
                 class_names: Sequence[str] | None = None) -> MultiLabelImages:
        """One row per image with its labels joined by ``separator`` (NIH ChestX-ray14's
        ``Data_Entry_2017.csv``). ``negative`` means no positive. Classes: ``class_names``,
        or the sorted set of labels that occur. Repeated rows of one image are merged."""
        rows = _read_csv(csv_file, (image_column, labels_column))
        per_image: dict[str, set[str]] = {}
        for row in rows:
            found = {s.strip() for s in row[labels_column].split(separator)} - {negative, ""}
            per_image.setdefault(row[image_column], set()).update(found)
        names = _class_names(per_image.values(), class_names, csv_file)
        index_of = {name: i for i, name in enumerate(names)}
        labels = _multi_hot([[index_of[s] for s in found] for found in per_image.values()],
                            len(names))
        return cls([Path(image_dir) / name for name in per_image], labels, names, transform,
                   on_error)

    @classmethod
    def from_vindr(cls, csv_file: str | Path, image_dir: str | Path,
                   transform: Transform | None = None, on_error: str = "skip", *,
                   suffix: str = ".png", negative: str = "No finding",
                   class_names: Sequence[str] | None = None) -> MultiLabelImages:
        """VinDr-CXR style: one row per finding with columns ``image_id, class_name, x_min,
        y_min, x_max, y_max`` (others ignored; boxes may be empty). Rows are aggregated per
        image (first-appearance order) into multi-hot labels; every box is kept (several
        radiologists may box the same finding). ``negative`` rows only register the image.
        Images are ``image_dir / (image_id + suffix)`` unless ``image_id`` has a suffix."""
        coords = ("x_min", "y_min", "x_max", "y_max")
        rows = _read_csv(csv_file, ("image_id", "class_name", *coords))
        per_image: dict[str, list[tuple[str, list[float]]]] = {}
        for row in rows:
            findings = per_image.setdefault(row["image_id"], [])
            if row["class_name"] != negative:
                findings.append((row["class_name"], [_float(row[c]) for c in coords]))
        names = _class_names(({n for n, _ in f} for f in per_image.values()), class_names,
                             csv_file)
        index_of = {name: i for i, name in enumerate(names)}
        boxes = [[[index_of[n], *xyxy] for n, xyxy in findings] for findings in per_image.values()]
        paths = [Path(image_dir) / (i if Path(i).suffix else i + suffix) for i in per_image]
        return cls.from_boxes(paths, boxes, names, transform, on_error)

    @classmethod
    def from_folders(cls, root: str | Path, transform: Transform | None = None,
                     on_error: str = "skip") -> MultiLabelImages:
        """``folder:DIR`` (see :mod:`camkit.data.specs`): one sub-folder per class (sorted
        names); every image below it is a sample of that class, labelled one-hot. Images
        directly in ``root`` have no class and are refused."""
        images = folder_images(root, f"folder:{root}")
        unlabelled = [image.relative for image in images if image.folder is None]
        if unlabelled:
            raise ValueError(f"{root}: {len(unlabelled)} image(s) lie outside the class "
                             f"sub-folders, e.g. {unlabelled[0]!r}; move them into one")
        classes = sorted({str(image.folder) for image in images})
        if not classes:
            raise ValueError(f"{root} has no class sub-folders with images")
        index_of = {name: k for k, name in enumerate(classes)}
        labels = _multi_hot([[index_of[str(image.folder)]] for image in images], len(classes))
        return cls([Path(root) / image.relative for image in images], labels, classes,
                   transform, on_error)


def _read_json(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def _read_csv(path: str | Path, columns: Sequence[str]) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        fields = reader.fieldnames or []
    absent = [c for c in columns if c not in fields]
    if absent:
        raise ValueError(f"{path} lacks the column(s) {absent}; it has {fields}")
    return rows


def _class_names(found: Iterable[set[str]], given: Sequence[str] | None,
                 source: str | Path) -> list[str]:
    seen = set().union(*found)
    if given is None:
        return sorted(seen)
    unknown = sorted(seen - set(given))
    if unknown:
        raise ValueError(f"{source} has labels {unknown} that are not in class_names")
    return list(given)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


SPEC_KINDS = ("folder", "coco", "csv", "vindr", "synthetic")


def dataset_from_spec(spec: str, transform: Transform | None = None,
                      on_error: str = "skip") -> Dataset:
    """The multi-label data set of a spec of :data:`SPEC_KINDS` (see
    :mod:`camkit.data.specs`); ``synthetic:N`` ignores ``transform``."""
    parsed = parse_spec(spec, SPEC_KINDS)
    if parsed.kind == "synthetic":
        from .synthetic import SyntheticMultiLabel

        return SyntheticMultiLabel(parsed.count())
    if parsed.kind == "folder":
        return MultiLabelImages.from_folders(parsed.args[0], transform, on_error)
    readers: dict[str, Callable[..., MultiLabelImages]] = {
        "coco": MultiLabelImages.from_coco, "csv": MultiLabelImages.from_csv,
        "vindr": MultiLabelImages.from_vindr}
    return readers[parsed.kind](*parsed.args, transform, on_error)
