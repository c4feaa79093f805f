"""Reading a results folder back: ``open_results(DIR)`` gives maps by image id.

Only shards the manifest lists as complete are read, so a folder whose job is still running
(or was killed) can be opened: it holds the images of its complete shards.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor

from .store import FORMAT, IDS, MANIFEST, iter_complete, read_json


@dataclass
class ImageResult:
    """The stored results of one image.

    Attributes:
        id: the image id.
        maps: method → ``(K, S, S)`` float32 maps in [0, 1] (stored as float16).
        constant: method → ``(K,)`` bool: maps that were constant (stored as zeros).
        scores: ``(K,)`` target scores.
        targets: ``(K,)`` target class indices.
    """

    id: str
    maps: dict[str, Tensor]
    constant: dict[str, Tensor]
    scores: Tensor
    targets: Tensor


class DatasetResults(Mapping[str, ImageResult]):
    """The explained images of a results folder, by id: ``results[image_id].maps["gradcam"]``.

    For many images at once, :meth:`maps`, :meth:`scores`, :meth:`targets` and
    :meth:`constant` return stacked tensors in the order of the ids asked for.

    Attributes:
        root: the folder.
        manifest: its manifest (settings, versions, shards).
        settings: the job's settings (model, layer, methods, options, target, map size, ...).
        methods: the methods stored.
        complete: whether every shard is written.
        failed: id → reason, for the images that could not be read.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"no camkit results in {self.root} (no {MANIFEST}); "
                                    "run camkit explain-dataset --out there first")
        self.manifest: dict[str, Any] = read_json(path)
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{path} is not a camkit.batch manifest")
        self.settings: dict[str, Any] = self.manifest["settings"]
        self.methods: list[str] = list(self.settings["methods"])
        self.complete: bool = bool(self.manifest["complete"])
        ids: list[str] = read_json(self.root / IDS)
        self.failed: dict[str, str] = {}
        self._where: dict[str, tuple[dict[str, Any], int]] = {}
        for entry in iter_complete(self.manifest):
            failed = {f["id"]: f["reason"] for f in entry["failed"]}
            self.failed |= failed
            explained = [i for i in ids[entry["start"] : entry["stop"]] if i not in failed]
            self._where |= {image: (entry, row) for row, image in enumerate(explained)}

    def __getitem__(self, image: str) -> ImageResult:
        if image not in self._where:
            raise KeyError(self._missing(image))
        return ImageResult(
            id=image,
            maps={m: self.maps(m, [image])[0] for m in self.methods},
            constant={m: self.constant(m, [image])[0] for m in self.methods},
            scores=self.scores([image])[0],
            targets=self.targets([image])[0],
        )

    def _missing(self, image: str) -> str:
        if image in self.failed:
            return f"image {image!r} could not be read: {self.failed[image]}"
        return f"no results for image {image!r} in {self.root}" + (
            "" if self.complete else " (the job has not finished: rerun it to complete it)")

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def maps(self, method: str, ids: Sequence[str] | None = None) -> Tensor:
        """``(N, K, S, S)`` float32 maps of ``method`` for ``ids`` (default: all, in order)."""
        if method not in self.methods:
            raise KeyError(f"{method!r} is not stored here; the folder has {self.methods}")
        return self._gather(f"maps/{method}", ids).float()

    def constant(self, method: str, ids: Sequence[str] | None = None) -> Tensor:
        """``(N, K)`` bool: which maps of ``method`` were constant (stored as zeros)."""
        if method not in self.methods:
            raise KeyError(f"{method!r} is not stored here; the folder has {self.methods}")
        return self._gather(f"constant/{method}", ids)

    def scores(self, ids: Sequence[str] | None = None) -> Tensor:
        """``(N, K)`` float32 target scores."""
        return self._gather("scores", ids)

    def targets(self, ids: Sequence[str] | None = None) -> Tensor:
        """``(N, K)`` int64 target class indices."""
        return self._gather("targets", ids)

    def _gather(self, name: str, ids: Sequence[str] | None) -> Tensor:
        wanted = list(self._where) if ids is None else list(ids)
        for image in wanted:
            if image not in self._where:
                raise KeyError(self._missing(image))
        if not wanted:
            first = next(iter_complete(self.manifest), None)
            return torch.empty(0) if first is None else self._read_rows(first, name, [])
        by_shard: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for n, image in enumerate(wanted):
            entry, row = self._where[image]
            by_shard[entry["shard"]].append((n, row))
        chunks, order = [], []
        for shard, rows in by_shard.items():
            chunks.append(self._read_rows(self.manifest["shards"][shard], name,
                                          [r for _, r in rows]))
            order += [n for n, _ in rows]
        stacked = torch.cat(chunks)
        gathered = torch.empty_like(stacked)
        gathered[torch.tensor(order)] = stacked
        return gathered

    def _read_rows(self, entry: dict[str, Any], name: str, rows: list[int]) -> Tensor:
        """Rows of one tensor of a shard, reading only the span between the first and last."""
        path = self.root / entry["file"]
        with safe_open(path, framework="pt") as f:
            part = f.get_slice(name)
            if part.get_shape()[0] != entry["images"]:
                raise ValueError(f"{path} holds {part.get_shape()[0]} rows, the manifest says "
                                 f"{entry['images']}; the folder is damaged")
            if not rows:
                return part[0:0]
            lo, hi = min(rows), max(rows)
            return part[lo : hi + 1][torch.as_tensor(np.asarray(rows) - lo)]


def open_results(root: str | os.PathLike[str]) -> DatasetResults:
    """The results stored in ``root`` by :func:`camkit.batch.explain_dataset`."""
    return DatasetResults(root)
