"""The Ray engine: the same batches as the local engine, explained by a pool of Ray actors.

Each row of a Ray Data data set is one batch (a range of positions); ``map_batches`` with the
callable class :class:`Explainer` runs them on an actor pool, where each actor builds the model
once (from the job's :class:`~camkit.batch.job.ModelSpec`), decodes its batch's images and
explains them. The actor returns the batch's results as safetensors bytes; the driver writes
the shards and the manifest, so the output folder need only be reachable from the driver.

The images must be readable by every node under the same paths (a shared file system), and
camkit (with ``ray[data]``) must be installed on every node. Ray is imported only here, and only
when the engine is used: ``pip install "camkit[ray]"``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .job import Job
from .sources import Source, load_range
from .store import BatchResult, decode, encode

Range = tuple[int, int]


def import_ray() -> Any:
    """``ray`` with Ray Data, or a clear error saying how to install it."""
    try:
        import ray
        import ray.data
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "the ray engine needs Ray Data: pip install 'camkit[ray]' (or 'ray[data]')",
            name="ray") from err
    return ray


class Explainer:
    """A Ray Data callable class: builds the job's model once per actor, then explains one
    batch per row of ``{"start", "stop"}`` and returns ``{"result": encoded results}``."""

    def __init__(self, job: Job, source: Source, threads: int) -> None:
        import ray

        torch.set_num_threads(threads)
        self.job, self.source = job, source
        self.device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.model = job.model.load().model.to(self.device)

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [
            encode(self.job.explain(self.model, load_range(self.source, int(start), int(stop),
                                                           self.job.preprocess), self.device))
            for start, stop in zip(rows["start"], rows["stop"], strict=True)
        ]
        return {"result": np.array(results, dtype=object)}


def resources(ray: Any, actors: int | None, batches: int) -> dict[str, Any]:
    """How many actors, and what each one holds: one GPU per actor when the cluster has GPUs
    (by default one actor per GPU), else one CPU per actor (by default one per CPU); never
    more actors by default than batches."""
    cluster = ray.cluster_resources()
    gpus, cpus = int(cluster.get("GPU", 0)), max(1, int(cluster.get("CPU", 1)))
    size = actors if actors is not None else min(gpus or cpus, batches)
    if size < 1:
        raise ValueError(f"ray_actors must be at least 1, got {size}")
    return {"size": size, "num_gpus": 1 if gpus else 0, "num_cpus": 1}


@contextlib.contextmanager
def connected(ray: Any, address: str | None) -> Iterator[None]:
    """Use the running Ray session, else connect to ``address`` (or ``RAY_ADDRESS``), else
    start a local instance; a connection made here is closed at the end."""
    if ray.is_initialized():
        yield
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _quiet_data_context(ray: Any) -> Iterator[None]:
    """Ray Data's own progress bars off (the job shows one), restored afterwards."""
    context = ray.data.DataContext.get_current()
    before = context.enable_progress_bars
    context.enable_progress_bars = False
    try:
        yield
    finally:
        context.enable_progress_bars = before


def run(job: Job, source: Source, ranges: list[Range], *, address: str | None = None,
        actors: int | None = None) -> Iterator[BatchResult]:
    """Explain ``ranges`` on a Ray cluster; yields each batch's results as it arrives (in any
    order)."""
    ray = import_ray()
    if not ranges:
        return
    with connected(ray, address), _quiet_data_context(ray):
        pool = resources(ray, actors, len(ranges))
        rows = ray.data.from_items([{"start": a, "stop": b} for a, b in ranges],
                                   override_num_blocks=len(ranges))
        explained = rows.map_batches(
            Explainer, batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=pool["size"]),
            num_cpus=pool["num_cpus"], num_gpus=pool["num_gpus"],
            fn_constructor_kwargs={"job": job, "source": source, "threads": pool["num_cpus"]},
        )
        for row in explained.iter_rows():
            yield decode(row["result"])
