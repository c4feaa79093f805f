"""``explain_dataset``: a data set through ``camkit.explain`` in batches, into resumable shards.

The work is cut into shards of ``shard_size`` consecutive images and each shard into batches of
``batch_size``; both engines explain exactly these batches, so their results are the same and
a rerun resumes with the shards that are not complete.
"""

from __future__ import annotations

import math
import os
import platform
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset

from camkit.progress import Progress
from camkit.version import __version__

from .job import Job, ModelSpec
from .results import DatasetResults, open_results
from .sources import LoadedBatch, Source, as_source, fingerprint, load_range
from .store import BatchResult, Store

ENGINES = ("local", "ray")
MAX_DEFAULT_SHARD = 1000
Range = tuple[int, int]


def explain_dataset(
    data: str | Any,
    out: str | os.PathLike[str],
    methods: str | Sequence[str] = ("gradcam",),
    *,
    model: ModelSpec | str = "efficientnet-lite0",
    layer: str | None = None,
    target: str | int | None = None,
    options: dict[str, Any] | None = None,
    ids: Sequence[str] | None = None,
    batch_size: int = 32,
    workers: int = 2,
    shard_size: int | None = None,
    map_size: int | None = None,
    engine: str = "local",
    device: str | None = None,
    ray_address: str | None = None,
    ray_actors: int | None = None,
    progress: bool | None = None,
) -> DatasetResults:
    """Explain every image of ``data`` and store the maps and scores in ``out``.

    Args:
        data: ``"folder:DIR"``, ``"list:FILE"`` or a map-style data set (see
            :mod:`camkit.batch.sources`).
        out: the results folder. A rerun with the same settings resumes there; a rerun with
            other settings is refused (:class:`~camkit.batch.store.SettingsMismatch`).
        methods: method names (``camkit.available_methods()``).
        model: a :class:`ModelSpec` (the arguments of ``camkit.zoo.load_model``) or an arch.
        layer: the target layer's dotted name; ``None`` for the model's default.
        target: ``"pred"``/``None``, ``"topK"``, ``"label"``, or a class index or name.
        options: method options (JSON values: they are recorded in the manifest).
        ids: the image ids of a Python data set (default ``"0"``, ``"1"``, ...).
        batch_size: images per ``camkit.explain`` call.
        workers: image-decoding processes of the local engine (0: decode in this process).
        shard_size: images per shard file (the unit of resumption); default
            :func:`default_shard_size`.
        map_size: stored maps are ``map_size × map_size`` (area-averaged); default the
            model's input size.
        engine: ``"local"`` (this process) or ``"ray"`` (a Ray cluster, see
            :mod:`camkit.batch.ray_engine`).
        device: the local engine's device (default ``cuda`` when available, else ``cpu``).
        ray_address: the Ray cluster to use (default: ``RAY_ADDRESS``, else a local one).
        ray_actors: the number of Ray model actors (default: one per GPU, else one per CPU).
        progress: a progress bar on stderr (``None``: only for jobs longer than a few
            seconds).

    Returns:
        The folder's :class:`DatasetResults` (maps by image id).
    """
    source = as_source(data, ids)
    shard_size = shard_size or default_shard_size(len(source.ids), batch_size)
    _check_arguments(batch_size, shard_size, workers, engine)
    spec = as_model_spec(model)
    loaded = spec.load()
    job = Job.create(spec, loaded, methods, layer, target, options or {}, map_size)
    settings = job.settings() | {"data": fingerprint(source.ids), "shard_size": shard_size}
    info = {"data": source.describe(),
            "weights_file": spec.weights and os.path.abspath(spec.weights)}
    with Store.open(Path(out), settings, source.ids, info, versions()) as store:
        ranges = plan_batches(store.pending, batch_size)
        if engine == "local":
            results = local_engine(job, loaded.model, source, ranges, workers,
                                   device or ("cuda" if torch.cuda.is_available() else "cpu"))
        else:
            from . import ray_engine

            results = ray_engine.run(job, source, ranges, address=ray_address,
                                     actors=ray_actors)
        write_shards(store, results, progress)
    return open_results(out)


def default_shard_size(images: int, batch_size: int) -> int:
    """A twentieth of the job, at least one batch and at most 1000 images: an interrupted
    short job keeps most of its work, a long one writes few files."""
    return min(MAX_DEFAULT_SHARD, max(batch_size, math.ceil(images / 20)))


def _check_arguments(batch_size: int, shard_size: int, workers: int, engine: str) -> None:
    for name, value, least in (("batch_size", batch_size, 1), ("shard_size", shard_size, 1),
                               ("workers", workers, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    if engine == "ray":
        from . import ray_engine

        ray_engine.import_ray()


def as_model_spec(model: ModelSpec | str) -> ModelSpec:
    """A :class:`ModelSpec` from itself or an architecture name."""
    spec = ModelSpec(model) if isinstance(model, str) else model
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"model must be a ModelSpec or an architecture name, got "
                        f"{type(model).__name__}: every worker rebuilds the model from "
                        "camkit.zoo.load_model's arguments, e.g. ModelSpec('resnet50', "
                        "weights='resnet50.pth')")
    return spec


def versions() -> dict[str, str]:
    """The versions recorded in the manifest."""
    return {"camkit": __version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version()}


def plan_batches(shards: list[dict[str, Any]], batch_size: int) -> list[Range]:
    """``(start, stop)`` position ranges of at most ``batch_size`` images; none crosses a
    shard boundary."""
    return [(start, min(start + batch_size, shard["stop"]))
            for shard in shards for start in range(shard["start"], shard["stop"], batch_size)]


class _RangeLoads(Dataset):
    """Item ``j`` is the loaded batch of range ``j`` (decoded in a DataLoader worker)."""

    def __init__(self, source: Source, ranges: list[Range], job: Job) -> None:
        self.source, self.ranges, self.preprocess = source, ranges, job.preprocess

    def __len__(self) -> int:
        return len(self.ranges)

    def __getitem__(self, j: int) -> LoadedBatch:
        return load_range(self.source, *self.ranges[j], self.preprocess)


def _as_is(batch: Any) -> Any:
    return batch


def local_engine(job: Job, model: nn.Module, source: Source, ranges: list[Range],
                 workers: int, device: str) -> Iterator[BatchResult]:
    """Explain ``ranges`` in this process; ``workers`` processes decode the images ahead."""
    loader = DataLoader(_RangeLoads(source, ranges, job), batch_size=None, shuffle=False,
                        num_workers=workers, collate_fn=_as_is,
                        prefetch_factor=2 if workers else None)
    model.to(device)
    for batch in loader:
        yield job.explain(model, batch, device)


def write_shards(store: Store, results: Iterator[BatchResult], progress: bool | None) -> None:
    """Collect batch results by shard and write each shard as soon as it is whole (results
    may arrive in any order)."""
    pending = {s["shard"]: s for s in store.pending}
    missing = {shard: s["stop"] - s["start"] for shard, s in pending.items()}
    parts: dict[int, list[BatchResult]] = defaultdict(list)
    shard_size = store.manifest["settings"]["shard_size"]
    constant = 0
    with Progress(sum(missing.values()), "explain-dataset", progress, unit="img") as bar:
        for result in results:
            shard = result.positions[0] // shard_size
            parts[shard].append(result)
            missing[shard] -= len(result.positions)
            constant += sum(int(c.sum()) for c in result.constant.values())
            if missing[shard] == 0:
                store.write_shard(shard, BatchResult.concat(parts.pop(shard)))
            bar.update(len(result.positions))
    unfinished = sorted(s for s, n in missing.items() if n)
    if unfinished:
        raise RuntimeError(f"the engine returned no results for shards {unfinished}")
    if constant:
        warnings.warn(f"{constant} maps were constant and are stored as zeros; "
                      "results.constant(method) says which", RuntimeWarning, stacklevel=3)
