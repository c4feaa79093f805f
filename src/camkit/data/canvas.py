"""Small items pasted at random positions on a larger cluttered canvas, with exact boxes and
masks: localisation ground truth for heat maps (ALGORITHMS §4.5) built from a classification
set such as Fashion-MNIST.

Fashion-MNIST comes from Debian (``apt-get install dataset-fashion-mnist``, files under
``/usr/share/datasets/fashion-mnist/``) as IDX files, read here with numpy
(:func:`read_idx`); nothing is downloaded.

How item ``i`` of a :class:`CanvasDataset` is drawn (all random draws from
``numpy.random.default_rng((seed, i))``, so any item can be regenerated on its own):

1. the background: Gaussian noise of standard deviation ``noise`` around ``background``;
2. ``clutter`` fragments: square crops (side drawn from ``fragment_size``) of other items of
   the source set, dimmed by a factor drawn from ``fragment_contrast``, pasted at random
   positions (the brighter pixel wins where they overlap);
3. the item: source image ``i``, resized by a factor drawn from ``scale`` (bilinear), pasted
   at a random position where it fits entirely. Its pixels brighter than ``mask_threshold``
   form the mask and replace the canvas there; its darker pixels (the item's black
   surroundings) are not drawn, so the clutter stays visible around the item.

The mask is exactly the set of pixels showing the item, and the box is the mask's tight
bounding box ``(x1, y1, x2, y2)``, ``x2``/``y2`` exclusive, as everywhere in camkit.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from camkit.data.images import PathLike

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
_FASHION_FILES = {"train": "train", "test": "t10k"}
# IDX element type codes (LeCun's format description) → big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: PathLike) -> np.ndarray:
    """An IDX file (optionally gzipped, as MNIST and Fashion-MNIST ship) as a numpy array.

    Layout: two zero bytes, a type code, the number of dimensions ``n``, ``n`` big-endian
    int32 sizes, then the data in big-endian C order.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the header is not IDX, or the data size does not match it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no IDX file at {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header_end = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(raw[4:header_end], dtype=">i4"))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header_end != expected:
        raise ValueError(f"{path}: the header promises shape {shape} ({expected} bytes of data), "
                         f"the file has {len(raw) - header_end}")
    data = np.frombuffer(raw, dtype=dtype, offset=header_end).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def fashion_mnist(split: str = "train", root: PathLike = FASHION_MNIST_ROOT
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``(images (N, 28, 28) uint8, labels (N,) int64)`` from the IDX files in
    ``root`` (Debian's ``dataset-fashion-mnist`` by default); ``split`` is ``"train"`` (60,000)
    or ``"test"`` (10,000)."""
    if split not in _FASHION_FILES:
        raise ValueError(f"split must be one of {sorted(_FASHION_FILES)}, got {split!r}")
    root, stem = Path(root), _FASHION_FILES[split]
    images_path = root / f"{stem}-images-idx3-ubyte.gz"
    if not images_path.is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST is not at {root}: install it with `apt-get install "
            "dataset-fashion-mnist` or pass root= (a folder with the four IDX files)")
    images = read_idx(images_path)
    labels = read_idx(root / f"{stem}-labels-idx1-ubyte.gz").astype(np.int64)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ValueError(f"{root}: images {images.shape} and labels {labels.shape} do not match")
    return images, labels


class CanvasDataset(Dataset):
    """Items pasted on cluttered canvases (see the module docstring for how each is drawn).

    ``data[i]`` is ``(image (channels, S, S) float32 in [0, 1], label (int64 scalar),
    box (4,) int64 (x1, y1, x2, y2), mask (S, S) bool)`` for source item ``i``.

    Args:
        items: ``(N, h, w)`` uint8 grey source images (object bright on black).
        labels: ``(N,)`` integer labels.
        canvas_size: ``S``.
        clutter: number of distractor fragments per canvas.
        fragment_size: ``(min, max)`` side of a fragment in pixels.
        fragment_contrast: ``(min, max)`` brightness factor of a fragment.
        scale: ``(min, max)`` resize factor of the item.
        noise: standard deviation of the background noise.
        background: mean background level in [0, 1].
        mask_threshold: an item pixel belongs to the item when brighter than this (in [0, 1]).
        channels: 1 (grey) or 3 (the grey image repeated, for RGB models).
        seed: the data set's seed.
        class_names: one name per label value (optional).
    """

    def __init__(
        self,
        items: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        canvas_size: int = 64,
        clutter: int = 6,
        fragment_size: tuple[int, int] = (6, 12),
        fragment_contrast: tuple[float, float] = (0.4, 0.9),
        scale: tuple[float, float] = (1.0, 1.0),
        noise: float = 0.05,
        background: float = 0.1,
        mask_threshold: float = 0.1,
        channels: int = 1,
        seed: int = 0,
        class_names: Sequence[str] | None = None,
    ) -> None:
        items = np.asarray(items)
        labels = np.asarray(labels, dtype=np.int64)
        if items.ndim != 3 or items.dtype != np.uint8 or len(items) == 0:
            raise ValueError(f"items must be a non-empty (N, h, w) uint8 array, got "
                             f"{items.dtype} {items.shape}")
        if labels.shape != items.shape[:1]:
            raise ValueError(f"labels {labels.shape} must be (N,) = ({len(items)},)")
        largest = int(np.ceil(max(items.shape[1:]) * scale[1]))
        if not 0 < scale[0] <= scale[1] or largest > canvas_size:
            raise ValueError(f"scale {scale} must be positive and ordered, and the largest item "
                             f"({largest} px) must fit the canvas ({canvas_size} px)")
        if not 1 <= fragment_size[0] <= fragment_size[1] <= min(items.shape[1:]):
            raise ValueError(f"fragment_size {fragment_size} must be ordered, between 1 and the "
                             f"item size {min(items.shape[1:])}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.items, self.labels = items, labels
        self.canvas_size, self.clutter = canvas_size, clutter
        self.fragment_size, self.fragment_contrast = fragment_size, fragment_contrast
        self.scale, self.noise, self.background = scale, noise, background
        self.mask_threshold, self.channels, self.seed = mask_threshold, channels, seed
        self.class_names = list(class_names) if class_names is not None else None

    @classmethod
    def fashion_mnist(cls, split: str = "train", n: int | None = None,
                      root: PathLike = FASHION_MNIST_ROOT, **kwargs: Any) -> CanvasDataset:
        """Canvases of the first ``n`` (all when ``None``) Fashion-MNIST items of ``split``."""
        images, labels = fashion_mnist(split, root)
        return cls(images[:n], labels[:n], class_names=FASHION_MNIST_CLASSES, **kwargs)

    def __len__(self) -> int:
        return len(self.items)

    def _item(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """Source item ``index`` as float in [0, 1], resized by a factor drawn from ``scale``."""
        item = self.items[index]
        factor = rng.uniform(*self.scale)
        if factor != 1.0:
            h, w = (max(1, round(s * factor)) for s in item.shape)
            item = np.asarray(Image.fromarray(item).resize((w, h), Image.Resampling.BILINEAR))
        return item.astype(np.float64) / 255

    def _clutter(self, canvas: np.ndarray, rng: np.random.Generator) -> None:
        side = self.canvas_size
        for _ in range(self.clutter):
            size = int(rng.integers(self.fragment_size[0], self.fragment_size[1] + 1))
            source = self.items[int(rng.integers(len(self.items)))]
            top, left = (int(rng.integers(0, s - size + 1)) for s in source.shape)
            fragment = source[top:top + size, left:left + size] / 255 * rng.uniform(
                *self.fragment_contrast)
            y, x = (int(v) for v in rng.integers(0, side - size + 1, size=2))
            region = canvas[y:y + size, x:x + size]
            np.maximum(region, fragment, out=region)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} canvases")
        rng = np.random.default_rng((self.seed, index))
        side = self.canvas_size
        canvas = self.background + self.noise * rng.standard_normal((side, side))
        self._clutter(canvas, rng)
        item = self._item(index, rng)
        h, w = item.shape
        y, x = int(rng.integers(0, side - h + 1)), int(rng.integers(0, side - w + 1))
        mask = np.zeros((side, side), dtype=bool)
        mask[y:y + h, x:x + w] = item > self.mask_threshold
        canvas[mask] = item[mask[y:y + h, x:x + w]]
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if len(rows) == 0:
            raise ValueError(f"source item {index} has no pixel above mask_threshold "
                             f"{self.mask_threshold}; lower the threshold or drop the item")
        box = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.int64)
        image = torch.from_numpy(canvas.clip(0, 1).astype(np.float32))[None]
        return (image.expand(self.channels, -1, -1).clone(), torch.tensor(self.labels[index]),
                torch.from_numpy(box), torch.from_numpy(mask))

    def stack(self, indices: Sequence[int] | None = None
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Items ``indices`` (all when ``None``) stacked: ``(images (n, channels, S, S),
        labels (n,), boxes (n, 4), masks (n, S, S))``."""
        chosen = range(len(self)) if indices is None else indices
        images, labels, boxes, masks = zip(*(self[int(i)] for i in chosen), strict=True)
        return torch.stack(images), torch.stack(labels), torch.stack(boxes), torch.stack(masks)

