"""Mosaics of real labelled images: multi-label images with an exact mask, box and grid cell
per present class, with the dials of :class:`~camkit.data.synthetic.SyntheticMultiLabel`
(co-occurring class pairs, class imbalance) and a decorrelated test split.

A mosaic is a ``rows × cols`` grid of ``side × side`` cells. Each class present in the image
fills one cell with an image of that class from an :class:`ImagePool`; the other cells stay
black. The pool says what the object of a cell is: ``"bright"`` for items bright on black
(Fashion-MNIST; the object is the cell's pixels brighter than ``threshold``, as in
:class:`~camkit.data.canvas.CanvasDataset`) or ``"cell"`` for photos (the whole cell).

How item ``i`` is drawn (every draw from ``numpy.random.default_rng((seed, split, i))``, so
any item can be regenerated on its own):

1. the labels: with ``fill=False``, by :func:`~camkit.data.synthetic.draw_labels` exactly as
   the synthetic set draws them (presence × imbalance, then ``P(b | a) = p`` for each
   co-occurring pair), which needs at least as many cells as classes; with ``fill=True``,
   ``rows · cols`` distinct classes chosen uniformly, one per cell (the grid pointing game);
2. a distinct random cell for each present class, in increasing class order;
3. a random pool image of each present class, in the same order.

:meth:`MosaicMultiLabel.decorrelated` is the test split without the dials: classes are
independent and balanced, so each appears alone with probability ``presence · (1 −
presence)^(K − 1)`` and a partner's presence no longer predicts a class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from camkit.data.canvas import FASHION_MNIST_CLASSES, FASHION_MNIST_ROOT, fashion_mnist
from camkit.data.images import PathLike, Preprocess, load_image
from camkit.data.samples import imagenet_samples
from camkit.data.synthetic import SPLITS, check_dials, draw_labels

OBJECTS = ("bright", "cell")


@dataclass(frozen=True)
class ImagePool:
    """Labelled square source images for mosaics.

    Attributes:
        images: ``(N, s, s)`` uint8 grey or ``(N, s, s, 3)`` uint8 RGB.
        labels: ``(N,)`` int64 label values.
        class_names: label value → name.
        objects: ``"bright"`` or ``"cell"`` (see the module docstring).
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: Mapping[int, str]
    objects: str = "cell"

    def __post_init__(self) -> None:
        shape = self.images.shape
        if (self.images.dtype != np.uint8 or self.images.ndim not in (3, 4) or len(shape) < 3
                or shape[1] != shape[2] or (self.images.ndim == 4 and shape[3] != 3)):
            raise ValueError(f"pool images must be (N, s, s) or (N, s, s, 3) uint8, got "
                             f"{self.images.dtype} {shape}")
        if self.labels.shape != shape[:1]:
            raise ValueError(f"pool labels {self.labels.shape} must be (N,) = ({shape[0]},)")
        if self.objects not in OBJECTS:
            raise ValueError(f"objects must be one of {OBJECTS}, got {self.objects!r}")

    @property
    def side(self) -> int:
        """``s``, the side of every image (and so of a mosaic cell)."""
        return int(self.images.shape[1])

    def resized(self, side: int) -> ImagePool:
        """The pool with every image resized (bilinear) to ``side × side``."""
        if side == self.side:
            return self
        images = np.stack([np.asarray(Image.fromarray(im).resize((side, side),
                                                                 Image.Resampling.BILINEAR))
                           for im in self.images])
        return ImagePool(images, self.labels, self.class_names, self.objects)


def fashion_pool(split: str = "train", root: PathLike = FASHION_MNIST_ROOT) -> ImagePool:
    """Fashion-MNIST's ``split`` (28 × 28 grey items bright on black) as a ``"bright"`` pool."""
    images, labels = fashion_mnist(split, root)
    return ImagePool(images, labels, dict(enumerate(FASHION_MNIST_CLASSES)), "bright")


def imagenet_pool(side: int = 112, class_names: Sequence[str] | None = None) -> ImagePool:
    """foolbox's 20 ImageNet photos (19 classes) resized to ``side × side`` as a ``"cell"``
    pool; labels are ImageNet-1k indices, named by ``class_names`` (the 1000 names) if given."""
    samples = imagenet_samples()
    images = np.stack([np.asarray(load_image(s.path).resize((side, side),
                                                            Image.Resampling.BILINEAR))
                       for s in samples])
    labels = np.array([s.label for s in samples], dtype=np.int64)
    names = {int(k): class_names[k] if class_names else f"imagenet-{k}" for k in labels}
    return ImagePool(images, labels, names, "cell")


class MosaicItem(NamedTuple):
    """One mosaic; a tuple ``(image, label, mask, ...)`` for training, a record for
    :func:`camkit.evaluate.evaluate` (which reads ``cells`` and ``grid`` by name)."""

    image: Tensor  # (3, H, W) float32 in [0, 1]
    label: Tensor  # (K,) float32 multi-hot
    mask: Tensor  # (K, H, W) bool, empty for absent classes
    box: Tensor  # (K, 4) float32 (x1, y1, x2, y2), x2/y2 exclusive; NaN for absent classes
    cells: Tensor  # (K,) int64 cell index row · cols + col, −1 for absent classes
    grid: tuple[int, int]  # (rows, cols)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """``(K, H, W)`` bool → ``(K, 4)`` float32 tight boxes ``(x1, y1, x2, y2)``, x2/y2
    exclusive; NaN for an empty mask."""
    boxes = np.full((len(masks), 4), np.nan, dtype=np.float32)
    for k, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if len(rows):
            boxes[k] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


class MosaicMultiLabel(Dataset):
    """``n`` mosaics of ``pool``'s images (see the module docstring for how each is drawn);
    ``data[i]`` is a :class:`MosaicItem`. Deterministic given ``seed`` and ``split``.

    Args:
        pool: the source images.
        n: number of mosaics.
        classes: the pool label values that are the mosaic's classes ``0 .. K − 1``, in this
            order (default: every label value of the pool, sorted).
        grid: ``(rows, cols)``; images are ``(rows · side, cols · side)`` with ``side`` the
            pool's.
        cooccur: ``{(a, b): P(b present | a present)}`` over mosaic classes.
        imbalance: ``{k: ratio}``: class ``k`` is ``ratio`` times as frequent as the others.
        presence: base probability of each class.
        fill: every cell holds a distinct class (the dials are then not used).
        seed: the data set's seed.
        split: ``"train"`` or ``"test"`` (independent mosaics for the same settings).
        threshold: a ``"bright"`` pool's object pixels are brighter than this (in [0, 1]).
    """

    def __init__(
        self,
        pool: ImagePool,
        n: int,
        classes: Sequence[int] | None = None,
        grid: tuple[int, int] = (2, 2),
        cooccur: Mapping[tuple[int, int], float] | None = None,
        imbalance: Mapping[int, float] | None = None,
        presence: float = 0.5,
        fill: bool = False,
        seed: int = 0,
        split: str = "train",
        threshold: float = 0.1,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        self.classes = [int(c) for c in (np.unique(pool.labels) if classes is None else classes)]
        self.members = [np.flatnonzero(pool.labels == c) for c in self.classes]
        absent = [c for c, m in zip(self.classes, self.members, strict=True) if len(m) == 0]
        if absent:
            raise ValueError(f"the pool has no image of class(es) {absent}")
        cells, k = grid[0] * grid[1], len(self.classes)
        if k < cells and fill:
            raise ValueError(f"fill needs at least as many classes as cells: {k} classes on a "
                             f"{grid[0]}×{grid[1]} grid")
        if k > cells and not fill:
            raise ValueError(f"{k} classes on a {grid[0]}×{grid[1]} grid: need at least as many "
                             "cells as classes (or fill=True)")
        self.cooccur, self.imbalance = dict(cooccur or {}), dict(imbalance or {})
        check_dials(k, self.cooccur, self.imbalance)
        self.pool, self.n, self.grid, self.presence, self.fill = pool, n, grid, presence, fill
        self.seed, self.split, self.threshold = seed, split, threshold
        self.class_names = [pool.class_names.get(c, str(c)) for c in self.classes]

    @property
    def num_classes(self) -> int:
        """``K``."""
        return len(self.classes)

    @classmethod
    def fashion_mnist(cls, n: int, split: str = "train", root: PathLike = FASHION_MNIST_ROOT,
                      **kwargs: Any) -> MosaicMultiLabel:
        """Mosaics of Fashion-MNIST's ``split`` items (the pool of the same split)."""
        return cls(fashion_pool(split, root), n, split=split, **kwargs)

    def decorrelated(self, n: int | None = None, pool: ImagePool | None = None
                     ) -> MosaicMultiLabel:
        """The test split of these settings without co-occurrence or imbalance: ``n`` mosaics
        (default this set's size) of ``pool`` (e.g. the source's test images; default this
        one's)."""
        return MosaicMultiLabel(pool or self.pool, self.n if n is None else n, self.classes,
                                self.grid, presence=self.presence, fill=self.fill,
                                seed=self.seed, split="test", threshold=self.threshold)

    def __len__(self) -> int:
        return self.n

    def _present(self, rng: np.random.Generator) -> np.ndarray:
        """Sorted indices of the present classes."""
        if self.fill:
            return np.sort(rng.choice(self.num_classes, self.grid[0] * self.grid[1],
                                      replace=False))
        return np.flatnonzero(draw_labels(rng, self.num_classes, self.presence, self.imbalance,
                                          self.cooccur))

    def _object(self, picture: np.ndarray) -> np.ndarray:
        """``(s, s)`` bool object mask of a ``(s, s, 3)`` cell picture in [0, 1]."""
        if self.pool.objects == "cell":
            return np.ones(picture.shape[:2], dtype=bool)
        return picture.max(axis=2) > self.threshold

    def __getitem__(self, index: int) -> MosaicItem:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} mosaics")
        rng = np.random.default_rng((self.seed, SPLITS[self.split], index))
        (rows, cols), side = self.grid, self.pool.side
        present = self._present(rng)
        cell_of = rng.permutation(rows * cols)[:len(present)]
        sources = [int(rng.choice(self.members[k])) for k in present]
        image = np.zeros((rows * side, cols * side, 3))
        masks = np.zeros((self.num_classes, rows * side, cols * side), dtype=bool)
        cells = np.full(self.num_classes, -1, dtype=np.int64)
        for k, cell, source in zip(present, cell_of, sources, strict=True):
            top, left = (int(cell) // cols) * side, (int(cell) % cols) * side
            region = (slice(top, top + side), slice(left, left + side))
            picture = self.pool.images[source].astype(np.float64) / 255
            image[region] = picture[..., None] if picture.ndim == 2 else picture
            masks[k][region] = self._object(image[region])
            cells[k] = cell
        labels = np.zeros(self.num_classes, dtype=np.float32)
        labels[present] = 1.0
        return MosaicItem(torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32)),
                          torch.from_numpy(labels), torch.from_numpy(masks),
                          torch.from_numpy(mask_boxes(masks)), torch.from_numpy(cells),
                          self.grid)


class ImageNetGrid(Dataset):
    """Grid mosaics of foolbox's ImageNet photos for a pretrained ImageNet model: each image a
    ``grid`` of distinct classes (``fill=True``), normalised by ``preprocess``'s mean and std.

    ``data[i]`` is a dict for :func:`camkit.evaluate.evaluate`'s grid pointing game:
    ``image`` ``(3, S, S)`` with ``S = preprocess.size`` (a multiple of the grid), ``label``
    ``(width,)`` multi-hot over ImageNet indices, ``cells`` ``(width,)`` (−1 where absent),
    ``grid`` and ``name``; ``mosaics[i]`` is the same mosaic in [0, 1] with its masks.
    """

    def __init__(self, n: int, preprocess: Preprocess | None = None, grid: tuple[int, int] = (2, 2),
                 seed: int = 0, width: int = 1000,
                 class_names: Sequence[str] | None = None) -> None:
        self.preprocess = preprocess or Preprocess()
        size = self.preprocess.size
        if size % grid[0] or size % grid[1] or grid[0] != grid[1]:
            raise ValueError(f"a square grid must divide the input size {size}, got {grid}")
        self.mosaics = MosaicMultiLabel(imagenet_pool(size // grid[0], class_names), n,
                                        grid=grid, fill=True, seed=seed, split="test")
        self.width = width

    def __len__(self) -> int:
        return len(self.mosaics)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.mosaics[index]
        classes = torch.tensor(self.mosaics.classes)
        label = torch.zeros(self.width).index_copy_(0, classes, item.label)
        cells = torch.full((self.width,), -1, dtype=torch.long).index_copy_(0, classes,
                                                                           item.cells)
        mean, std = (torch.tensor(v).view(3, 1, 1) for v in (self.preprocess.mean,
                                                             self.preprocess.std))
        return {"image": (item.image - mean) / std, "label": label, "cells": cells,
                "grid": item.grid, "name": f"grid-{index}"}
