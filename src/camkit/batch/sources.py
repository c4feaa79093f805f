"""Where a job's images come from: ``folder:DIR``, ``list:FILE``, or a map-style data set.

Each source gives every image an id (a string, unique) and loads image ``i`` as a
preprocessed ``(C, H, W)`` tensor with its label (or ``None``). Unreadable images raise
``OSError``/``ValueError``, which the job records and skips.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from camkit.data.images import Preprocess, load_image
from camkit.data.specs import DataSpec, folder_images, list_images, parse_spec, spec_help

SPEC_KINDS = ("folder", "list")
SPEC_HELP = spec_help(SPEC_KINDS)


class Source(Protocol):
    """A data set of images with string ids."""

    ids: list[str]

    def load(self, position: int, preprocess: Preprocess) -> tuple[Tensor, int | None]:
        """Image ``position`` as a ``(C, H, W)`` float tensor, and its class label or None."""
        ...

    def describe(self) -> str:
        """Where the images come from, for the manifest."""
        ...


@dataclass
class FileSource:
    """Image files, with optional labels."""

    paths: list[str]
    ids: list[str]
    labels: list[int] | None
    spec: str

    def load(self, position: int, preprocess: Preprocess) -> tuple[Tensor, int | None]:
        label = None if self.labels is None else self.labels[position]
        return preprocess(load_image(self.paths[position])), label

    def describe(self) -> str:
        return self.spec


@dataclass
class DatasetSource:
    """A map-style data set: ``dataset[i]`` is a PIL image, a ``(C, H, W)`` tensor (already
    preprocessed), or a tuple whose first element is one and second an optional class label
    (as torchvision data sets return). Reading errors must be ``OSError`` or ``ValueError``."""

    dataset: Any
    ids: list[str]

    def load(self, position: int, preprocess: Preprocess) -> tuple[Tensor, int | None]:
        item = self.dataset[position]
        image, label = (item[0], _label(item[1:])) if isinstance(item, (tuple, list)) else (
            item, None)
        if isinstance(image, Image.Image):
            return preprocess(image), label
        if isinstance(image, Tensor) and image.dim() == 3:
            return image.float(), label
        raise TypeError(f"item {position} of the data set holds a {type(image).__name__}; a "
                        "data set must give PIL images or (C, H, W) tensors (or tuples "
                        "starting with one)")

    def describe(self) -> str:
        return f"python data set {type(self.dataset).__module__}.{type(self.dataset).__name__}"


def _label(rest: Sequence[Any]) -> int | None:
    if not rest:
        return None
    label = rest[0]
    if isinstance(label, Tensor) and label.numel() == 1 and not label.is_floating_point():
        return int(label)
    return int(label) if isinstance(label, (int, np.integer)) else None


def folder_source(spec: DataSpec) -> FileSource:
    """Every image of ``folder:DIR`` (see :mod:`camkit.data.specs`); the ids are the paths
    relative to ``DIR``. Jobs do not read labels from the class sub-folders."""
    root = Path(spec.args[0])
    relative = [image.relative for image in folder_images(root, spec.text)]
    return FileSource([str(root / r) for r in relative], relative, None, spec.text)


def list_source(spec: DataSpec) -> FileSource:
    """The images listed in ``list:FILE``, with their labels when every entry has one."""
    folder = Path(spec.args[0]).parent
    entries = list_images(spec.args[0], spec.text)
    ids = [path for path, _ in entries]
    labels = [label for _, label in entries if label is not None]
    paths = [str(folder / i) for i in ids]  # an absolute id stays absolute
    return FileSource(paths, ids, labels if len(labels) == len(ids) else None, spec.text)


def as_source(data: str | Any, ids: Sequence[str] | None = None) -> Source:
    """The source named by a spec string (``folder:DIR``, ``list:FILE``) or wrapping a
    map-style data set (``ids`` default to ``"0"``, ``"1"``, ...)."""
    if isinstance(data, str):
        if ids is not None:
            raise ValueError("ids= is for Python data sets; file sources name images by path")
        spec = parse_spec(data, SPEC_KINDS)
        source: Source = (folder_source if spec.kind == "folder" else list_source)(spec)
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        names = [str(i) for i in range(len(data))] if ids is None else [str(i) for i in ids]
        if len(names) != len(data):
            raise ValueError(f"got {len(names)} ids for a data set of {len(data)} items")
        source = DatasetSource(data, names)
    else:
        raise TypeError(f"data must be a spec string ({SPEC_HELP}) or a map-style data set "
                        f"(__getitem__ and __len__), got {type(data).__name__}")
    _check_ids(source.ids, data)
    return source


def _check_ids(ids: list[str], data: object) -> None:
    if not ids:
        raise ValueError(f"no images found in {data!r}")
    twice = [i for i, count in Counter(ids).items() if count > 1]
    if twice:
        raise ValueError(f"image ids must be unique; {twice[0]!r} appears more than once")


def fingerprint(ids: Sequence[str]) -> dict[str, Any]:
    """What identifies a data set in the settings: the number of images and a hash of ids."""
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    return {"images": len(ids), "ids_sha256": digest}


@dataclass
class LoadedBatch:
    """Images ``start..stop`` of a source, ready for the model.

    ``index`` ``(n,)`` are the positions of the readable ones, ``x`` ``(n, C, H, W)`` their
    tensors, ``labels`` ``(n,)`` their labels (``None`` unless every one has a label),
    ``failed`` the ``(position, reason)`` of the others.
    """

    index: Tensor
    x: Tensor
    labels: Tensor | None
    failed: list[tuple[int, str]]


def load_range(source: Source, start: int, stop: int, preprocess: Preprocess) -> LoadedBatch:
    """Load images ``start..stop - 1``; unreadable ones are listed in ``failed``."""
    good: list[tuple[int, Tensor, int | None]] = []
    failed: list[tuple[int, str]] = []
    for position in range(start, stop):
        try:
            good.append((position, *source.load(position, preprocess)))
        except (OSError, ValueError) as err:
            failed.append((position, f"{type(err).__name__}: {err}"))
    labels = [label for _, _, label in good]
    return LoadedBatch(
        index=torch.tensor([p for p, _, _ in good], dtype=torch.long),
        x=_stack([x for _, x, _ in good], [p for p, _, _ in good], preprocess.size),
        labels=None if None in labels or not good else torch.tensor(labels),
        failed=failed,
    )


def _stack(images: list[Tensor], positions: list[int], size: int) -> Tensor:
    if not images:
        return torch.empty(0, 3, size, size)
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) > 1:
        raise ValueError(f"images {positions[0]}..{positions[-1]} have different shapes "
                         f"{sorted(shapes)}; a data set giving tensors must give one size")
    return torch.stack(images)
