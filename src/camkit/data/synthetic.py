"""A synthetic multi-label data set with exact object masks, for tests and bias experiments.

Each class is a distinct object: a shape (square, disc, triangle, cross, ring), a texture
(solid, horizontal stripes, vertical stripes, checker) and a colour (hue ``k / n_cls``);
class ``k`` uses shape ``k mod 5`` and texture ``k mod 4``, so the first 20 classes differ in
shape and texture as well as colour. An image holds at most one object per class, placed at a
random position and size on a noisy grey background.

Sampling of the labels of one image (all draws from ``numpy.random.default_rng((seed,
split, index))``, so any item can be regenerated on its own):

1. class ``k`` is present with probability ``presence · imbalance.get(k, 1)``;
2. then, for each ``(a, b), prob`` in ``cooccur`` (in its order): when ``a`` is present,
   ``b`` is re-drawn to be present with probability ``prob``, i.e.
   ``P(b present | a present) = prob``. (This raises or lowers ``b``'s overall frequency.)

Placement: ``"random"`` puts each object anywhere; ``"anchored"`` centres class ``k``'s object
on its own anchor (the centres of a grid of ``⌈√n_cls⌉`` columns), shifted by up to
``jitter · image_size`` in each direction, so that where an object lies tells which class it
is, as organs and findings do in chest X-rays (a position-informative set).

Masks are exact: ``masks[k]`` marks the pixels where object ``k`` is visible. Objects are
placed without overlap when 20 tries allow it; otherwise a later object hides part of an
earlier one and the earlier mask loses those pixels.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

SHAPES = ("square", "disc", "triangle", "cross", "ring")
TEXTURES = ("solid", "hstripes", "vstripes", "checker")
SPLITS = {"train": 0, "test": 1}
PLACEMENTS = ("random", "anchored")
PLACEMENT_TRIES = 20


def shape_mask(shape: str, size: int) -> np.ndarray:
    """A ``(size, size)`` bool silhouette of ``shape`` centred in its box."""
    grid = (np.arange(size) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    y, x = np.meshgrid(grid, grid, indexing="ij")
    r2 = x * x + y * y
    masks = {
        "square": np.maximum(abs(x), abs(y)) <= 0.9,
        "disc": r2 <= 0.81,
        "triangle": (abs(y) <= 0.9) & (abs(x) <= (y + 0.9) / 2),
        "cross": ((abs(x) <= 0.3) | (abs(y) <= 0.3)) & (np.maximum(abs(x), abs(y)) <= 0.9),
        "ring": (r2 <= 0.81) & (r2 >= 0.3),
    }
    return masks[shape]


def texture_pattern(texture: str, size: int) -> np.ndarray:
    """A ``(size, size)`` brightness pattern in {0.45, 1} with a 4-pixel period."""
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    bright = {
        "solid": np.ones((size, size), dtype=bool),
        "hstripes": (rows // 2) % 2 == 0,
        "vstripes": (cols // 2) % 2 == 0,
        "checker": ((rows // 2) + (cols // 2)) % 2 == 0,
    }[texture]
    return np.where(bright, 1.0, 0.45)


def anchors(num_classes: int, side: int) -> np.ndarray:
    """``(num_classes, 2)`` ``(row, column)`` centres: the cells of a grid of ``⌈√n_cls⌉``
    columns over a ``side × side`` image, filled row by row."""
    cols = int(np.ceil(np.sqrt(num_classes)))
    rows = int(np.ceil(num_classes / cols))
    k = np.arange(num_classes)
    return np.stack([(k // cols + 0.5) * side / rows, (k % cols + 0.5) * side / cols], axis=1)


def check_dials(num_classes: int, cooccur: Mapping[tuple[int, int], float],
                imbalance: Mapping[int, float]) -> None:
    """Refuse a co-occurrence pair or an imbalanced class outside ``0 .. num_classes - 1``."""
    for k in [*imbalance, *(c for pair in cooccur for c in pair)]:
        if not 0 <= k < num_classes:
            raise ValueError(f"class {k} is out of range for {num_classes} classes")


def draw_labels(rng: np.random.Generator, num_classes: int, presence: float,
                imbalance: Mapping[int, float], cooccur: Mapping[tuple[int, int], float]
                ) -> np.ndarray:
    """The ``(num_classes,)`` bool labels of one image, drawn as the module docstring says
    (steps 1 and 2); shared by the synthetic and the mosaic data sets."""
    rates = np.array([presence * imbalance.get(k, 1.0) for k in range(num_classes)])
    present = rng.random(num_classes) < rates
    for (a, b), prob in cooccur.items():
        draw = rng.random()
        if present[a]:
            present[b] = draw < prob
    return present


class SyntheticMultiLabel(Dataset):
    """``n`` images yielding ``(image (3, H, W) float32 in [0, 1], multi-hot (n_cls,) float32,
    masks (n_cls, H, W) bool)``; deterministic given ``seed`` and ``split``.

    Args:
        n: number of images.
        image_size: ``H = W``.
        num_classes: ``n_cls``.
        cooccur: ``{(a, b): P(b present | a present)}``.
        imbalance: ``{k: ratio}``: class ``k`` is ``ratio`` times as frequent as the others.
        presence: base probability of each class.
        seed: the data set's seed.
        split: ``"train"`` or ``"test"`` (independent images for the same settings).
        object_size: object side as a fraction of ``image_size``, ``(min, max)``.
        noise: standard deviation of the background noise.
        placement: ``"random"`` or ``"anchored"`` (see the module docstring).
        jitter: largest shift from the anchor, as a fraction of ``image_size``.
    """

    def __init__(
        self,
        n: int,
        image_size: int = 64,
        num_classes: int = 4,
        cooccur: Mapping[tuple[int, int], float] | None = None,
        imbalance: Mapping[int, float] | None = None,
        presence: float = 0.5,
        seed: int = 0,
        split: str = "train",
        object_size: tuple[float, float] = (0.25, 0.4),
        noise: float = 0.05,
        placement: str = "random",
        jitter: float = 0.06,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        self.cooccur = dict(cooccur or {})
        self.imbalance = dict(imbalance or {})
        check_dials(num_classes, self.cooccur, self.imbalance)
        self.n, self.image_size, self.num_classes = n, image_size, num_classes
        self.presence, self.seed, self.split = presence, seed, split
        self.object_size, self.noise = object_size, noise
        self.placement, self.jitter = placement, jitter
        self.anchors = anchors(num_classes, image_size)
        self.class_names = [f"{SHAPES[k % len(SHAPES)]}-{TEXTURES[k % len(TEXTURES)]}-{k}"
                            for k in range(num_classes)]
        self.colours = [colorsys.hsv_to_rgb(k / num_classes, 0.9, 0.95)
                        for k in range(num_classes)]

    def __len__(self) -> int:
        return self.n

    def _labels(self, rng: np.random.Generator) -> np.ndarray:
        return draw_labels(rng, self.num_classes, self.presence, self.imbalance, self.cooccur)

    def _anchored(self, rng: np.random.Generator, k: int, size: int) -> tuple[int, int]:
        """Top-left corner of class ``k``'s object around its anchor, inside the image."""
        shift = rng.uniform(-self.jitter, self.jitter, size=2) * self.image_size
        corner = np.round(self.anchors[k] + shift - size / 2).astype(int)
        top, left = np.clip(corner, 0, self.image_size - size)
        return int(top), int(left)

    def _place(self, rng: np.random.Generator, size: int, boxes: list[tuple[int, int, int]]
               ) -> tuple[int, int]:
        limit = self.image_size - size + 1
        for _ in range(PLACEMENT_TRIES):
            top, left = (int(v) for v in rng.integers(0, limit, size=2))
            if all(top + size <= t or t + s <= top or left + size <= l or l + s <= left
                   for t, l, s in boxes):
                break
        boxes.append((top, left, size))
        return top, left

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} images")
        rng = np.random.default_rng((self.seed, SPLITS[self.split], index))
        side = self.image_size
        present = self._labels(rng)
        image = 0.5 + self.noise * rng.standard_normal((side, side, 3))
        owner = np.full((side, side), -1)
        boxes: list[tuple[int, int, int]] = []
        low, high = (max(2, round(f * side)) for f in self.object_size)
        for k in np.flatnonzero(present):
            size = int(rng.integers(low, high + 1))
            top, left = (self._anchored(rng, int(k), size) if self.placement == "anchored"
                         else self._place(rng, size, boxes))
            silhouette = shape_mask(SHAPES[k % len(SHAPES)], size)
            shade = texture_pattern(TEXTURES[k % len(TEXTURES)], size)[..., None]
            region = (slice(top, top + size), slice(left, left + size))
            image[region][silhouette] = (shade * np.array(self.colours[k]))[silhouette]
            owner[region][silhouette] = k
        masks = owner[None] == np.arange(self.num_classes)[:, None, None]
        return (torch.from_numpy(image.clip(0, 1).transpose(2, 0, 1).astype(np.float32)),
                torch.from_numpy(present.astype(np.float32)),
                torch.from_numpy(masks))
