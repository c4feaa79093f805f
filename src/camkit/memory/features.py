"""Target-layer features for memory training: computed once and cached, or recomputed.

The target network is frozen while the memory trains (ALGORITHMS §1.3), so its features
never change: :func:`extract_features` runs it once over the data and keeps the result in a
tensor (``cache="memory"``) or a numpy memmap on disk (``cache="disk"``); every epoch then
reads batches from the cache. ``cache=None`` recomputes them every batch (for comparison,
or for a data set whose transform is random).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ..data.multilabel import Skipped, collate_skipping
from ..progress import Progress

FeatureFn = Callable[[Tensor], Tensor]
CacheMode = Literal["auto", "memory", "disk"] | None
Batches = Sequence[Tensor]


class FeatureSource(Protocol):
    """Batches of ``(features (b, c, h, w), labels (b, n_cls))`` for given index batches.

    Attributes: ``feature_shape`` ``(c, h, w)``, ``input_size`` ``(H, W)`` of the images,
    ``skipped`` the images that could not be loaded."""

    feature_shape: tuple[int, ...]
    input_size: tuple[int, int]
    skipped: list[Skipped]

    def __len__(self) -> int: ...

    def iterate(self, batches: Batches) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield the batches in order (a batch may shrink by skipped images)."""
        ...

    def close(self) -> None:
        """Release what the source holds (a disk cache is deleted)."""
        ...


class CachedFeatures:
    """Features computed once: ``features`` ``(n, c, h, w)`` float32 (a tensor, or a numpy
    memmap backed by ``path``), ``labels`` ``(n, n_cls)``."""

    def __init__(self, features: Tensor | np.memmap, labels: Tensor, input_size: tuple[int, int],
                 skipped: list[Skipped], path: Path | None = None) -> None:
        self.features, self.labels, self.path = features, labels, path
        self.feature_shape = tuple(features.shape[1:])
        self.input_size, self.skipped = input_size, skipped

    def __len__(self) -> int:
        return len(self.labels)

    def iterate(self, batches: Batches) -> Iterator[tuple[Tensor, Tensor]]:
        for rows in batches:
            if isinstance(self.features, Tensor):
                yield self.features[rows], self.labels[rows]
            else:
                yield torch.from_numpy(self.features[rows.numpy()]), self.labels[rows]

    def close(self) -> None:
        if self.path is not None:
            del self.features  # unmap before deleting the file
            self.path.unlink(missing_ok=True)
            self.path = None


class LiveFeatures:
    """Features recomputed from the images for every batch (``cache=None``)."""

    def __init__(self, data: Any, feature_fn: FeatureFn, device: torch.device,
                 num_workers: int, probe: CachedFeatures) -> None:
        self.data, self.feature_fn, self.device = data, feature_fn, device
        self.num_workers = num_workers
        self.feature_shape, self.input_size = probe.feature_shape, probe.input_size
        self.skipped: list[Skipped] = []

    def __len__(self) -> int:
        return len(self.data)

    def iterate(self, batches: Batches) -> Iterator[tuple[Tensor, Tensor]]:
        loader = DataLoader(self.data, batch_sampler=[b.tolist() for b in batches],
                            collate_fn=collate_skipping, num_workers=self.num_workers)
        for images, labels, skipped in loader:
            self.skipped += skipped
            if images is not None:
                yield self.feature_fn(images.to(self.device)), labels

    def close(self) -> None:
        """Nothing to release."""


def _cache_mode(mode: CacheMode, nbytes: int, max_memory_bytes: int) -> str:
    if mode == "auto":
        return "memory" if nbytes <= max_memory_bytes else "disk"
    if mode not in ("memory", "disk"):
        raise ValueError(f"cache must be 'auto', 'memory', 'disk' or None, got {mode!r}")
    return mode


def _allocate(mode: str, shape: tuple[int, ...], cache_dir: str | Path | None
              ) -> tuple[Tensor | np.memmap, Path | None]:
    if mode == "memory":
        return torch.empty(shape), None
    fd, name = tempfile.mkstemp(prefix="camkit-features-", suffix=".f32", dir=cache_dir)
    os.close(fd)
    return np.memmap(name, dtype=np.float32, mode="w+", shape=shape), Path(name)


def extract_features(
    data: Any,
    feature_fn: FeatureFn,
    num_classes: int,
    *,
    device: torch.device,
    batch_size: int,
    cache: CacheMode = "auto",
    max_memory_bytes: int = 4 * 2**30,
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
    progress: bool = True,
    limit: int | None = None,
) -> CachedFeatures:
    """Run ``feature_fn`` once over ``data`` (in order) and cache every valid sample's
    features. ``cache="auto"`` keeps them in memory when they need at most
    ``max_memory_bytes``, else on disk (``cache_dir``, default the system temp folder).
    ``limit`` stops after that many images (used to probe shapes). Images that fail to load
    are left out and listed in ``.skipped``."""
    total = len(data) if limit is None else min(limit, len(data))
    loader = DataLoader(torch.utils.data.Subset(data, range(total)), batch_size=batch_size,
                        collate_fn=collate_skipping, num_workers=num_workers)
    store: Any = None  # a tensor, or a memmap when the cache is on disk
    path, count, labels, skipped = None, 0, [], []
    input_size: tuple[int, int] = (0, 0)
    with Progress(len(loader), "features", progress, unit="batch") as bar:
        try:
            for images, batch_labels, bad in loader:
                bar.update(1)
                skipped += bad
                if images is None:
                    continue
                _check_labels(batch_labels, num_classes)
                features = feature_fn(images.to(device)).float().cpu()
                if store is None:
                    input_size = (int(images.shape[-2]), int(images.shape[-1]))
                    shape = (total, *features.shape[1:])
                    mode = _cache_mode(cache, int(np.prod(shape)) * 4, max_memory_bytes)
                    store, path = _allocate(mode, shape, cache_dir)
                elif tuple(features.shape[1:]) != tuple(store.shape[1:]):
                    raise ValueError(f"features of shape {tuple(features.shape[1:])} after "
                                     f"{tuple(store.shape[1:])}: the images differ in size; use a "
                                     "transform that resizes them all to one size")
                store[count:count + len(features)] = features.numpy() if path else features
                labels.append(batch_labels)
                count += len(features)
        except BaseException:
            if path is not None:
                path.unlink(missing_ok=True)
            raise
    if store is None:
        raise ValueError(f"no image of the {total} could be loaded; skipped: {skipped[:3]}")
    return CachedFeatures(store[:count], torch.cat(labels).float(), input_size, skipped, path)


def _check_labels(labels: Tensor, num_classes: int) -> None:
    if labels.dim() != 2 or labels.shape[1] != num_classes:
        raise ValueError(f"the data yields labels of shape {tuple(labels.shape[1:])}; expected "
                         f"multi-hot vectors of length num_classes = {num_classes}")
