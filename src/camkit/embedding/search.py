"""Nearest-neighbour search over bank embeddings, and k-means for the cluster variant
(ALGORITHMS §2.4, OP-20).

Two back-ends behind one call, ``index.search(queries, k) -> (squared distances, indices)``:

- :class:`TorchIndex`: exact, chunked matrix products on the bank's device; no dependency;
- :class:`FaissIndex`: FAISS (``pip install camkit[faiss]``, i.e. ``faiss-cpu``), either
  ``"flat"`` (exact) or ``"ivf"`` (inverted lists: approximate, much faster on large banks;
  ``nprobe`` of ``nlist`` lists are scanned, all of them = exact).

:func:`make_index` with ``backend="auto"`` takes the exact torch search below
:data:`AUTO_FAISS_MIN` entries and FAISS IVF above it; without FAISS installed it falls back to
the exact torch search and says so in a warning.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from typing import Any, Protocol

import torch
from torch import Tensor

from .triplets import squared_distances

BACKENDS = ("auto", "torch", "faiss", "faiss-flat", "faiss-ivf")
AUTO_FAISS_MIN = 200_000  # bank size from which "auto" picks FAISS IVF
QUERY_ELEMENTS = 1 << 24  # query × bank distances computed at once by the torch search
TRAIN_PER_LIST = 64  # FAISS IVF training rows per inverted list


class NeighbourIndex(Protocol):
    """What a search back-end offers."""

    name: str

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """``(n, D)`` queries → ``(squared L2 distances (n, k), indices (n, k) int64)``,
        nearest first."""
        ...


def faiss_available() -> bool:
    """Whether the ``faiss`` module can be imported."""
    return importlib.util.find_spec("faiss") is not None


class TorchIndex:
    """Exact search: squared L2 distances ``‖q‖² − 2 q·e + ‖e‖²`` by one fused matrix
    product per bank chunk (the bank's ``‖e‖²`` computed once), keeping the running ``k``
    best (ties go to the lower index)."""

    name = "torch"

    def __init__(self, embeddings: Tensor) -> None:
        self.embeddings = embeddings.float()
        self.norms = self.embeddings.pow(2).sum(dim=1)

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        bank = self.embeddings
        k = _checked_k(k, len(bank))
        queries = queries.to(bank.device, torch.float32)
        step = max(k, QUERY_ELEMENTS // max(1, len(queries)))
        best_d = queries.new_empty((len(queries), 0))
        best_i = torch.empty((len(queries), 0), dtype=torch.long, device=bank.device)
        for start in range(0, len(bank), step):
            chunk = slice(start, start + step)
            d = torch.addmm(self.norms[chunk], queries, bank[chunk].T, alpha=-2)
            d, i = d.topk(min(k, d.shape[1]), dim=1, largest=False, sorted=True)
            best_d, order = torch.cat([best_d, d], 1).topk(min(k, best_d.shape[1] + d.shape[1]),
                                                           dim=1, largest=False, sorted=True)
            best_i = torch.cat([best_i, i + start], 1).gather(1, order)
        return (best_d + queries.pow(2).sum(dim=1, keepdim=True)).clamp(min=0), best_i


class FaissIndex:
    """FAISS search on the CPU, L2 metric: ``kind="flat"`` exact (``IndexFlatL2``) or
    ``"ivf"`` (``IndexIVFFlat`` with ``nlist`` lists, default ``round(√N)``, trained on at
    most ``64 · nlist`` bank rows drawn with ``seed``; ``nprobe`` lists are scanned per
    query, default 64). The defaults keep the build of a 1M-entry index within tens of seconds
    on two CPU cores; more lists scan less per query but take longer to train.

    IVF is approximate and its recall depends on the data: high for embeddings that cluster
    (as a trained network's do), poor for structureless ones (docs/benchmarks.md,
    ``embedding-search``); compare with ``TorchIndex`` on a sample of queries when unsure."""

    def __init__(self, embeddings: Tensor, kind: str = "ivf", nlist: int | None = None,
                 nprobe: int = 64, seed: int = 0) -> None:
        faiss = import_faiss()
        if kind not in ("flat", "ivf"):
            raise ValueError(f"FAISS index kind must be 'flat' or 'ivf', got {kind!r}")
        data = embeddings.detach().float().cpu().contiguous().numpy()
        n, dim = data.shape
        self.name = f"faiss-{kind}"
        if kind == "flat":
            self.index: Any = faiss.IndexFlatL2(dim)
        else:
            nlist = nlist or max(1, min(n, round(math.sqrt(n))))
            self.quantizer = faiss.IndexFlatL2(dim)
            self.index = faiss.IndexIVFFlat(self.quantizer, dim, nlist, faiss.METRIC_L2)
            generator = torch.Generator().manual_seed(seed)
            sample = torch.randperm(n, generator=generator)[: TRAIN_PER_LIST * nlist].sort().values
            self.index.cp.seed = seed
            self.index.train(data[sample.numpy()])
            self.index.nprobe = min(nprobe, nlist)
        self.index.add(data)
        self.size = n

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        k = _checked_k(k, self.size)
        q = queries.detach().float().cpu().contiguous().numpy()
        distances, indices = self.index.search(q, k)
        if (indices < 0).any():
            raise RuntimeError(f"{self.name} found fewer than k={k} neighbours for some queries; "
                               "raise nprobe or use the exact search")
        device = queries.device
        return torch.from_numpy(distances).to(device), torch.from_numpy(indices).to(device)


def import_faiss() -> Any:
    """The ``faiss`` module, or a clear error with the install command."""
    if not faiss_available():
        raise ModuleNotFoundError("FAISS is not installed: pip install 'camkit[faiss]' "
                                  "(or faiss-cpu), or use search='torch'", name="faiss")
    import faiss

    return faiss


def _checked_k(k: int, size: int) -> int:
    if not 1 <= k <= size:
        raise ValueError(f"asked for k={k} neighbours in a bank of {size}; need 1 <= k <= {size}")
    return k


def make_index(embeddings: Tensor, backend: str = "auto", **faiss_options: Any
               ) -> NeighbourIndex:
    """A search index over ``(N, D)`` embeddings. ``backend``: ``"torch"`` (exact),
    ``"faiss-flat"`` (exact), ``"faiss-ivf"`` or ``"faiss"`` (approximate, see
    :class:`FaissIndex` for ``faiss_options``), ``"auto"`` (module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown search backend {backend!r}; choose one of {BACKENDS}")
    if len(embeddings) == 0:
        raise ValueError("cannot search an empty bank: fit it on at least one image")
    if backend == "auto":
        if len(embeddings) < AUTO_FAISS_MIN:
            backend = "torch"
        elif faiss_available():
            backend = "faiss-ivf"
        else:
            warnings.warn(
                f"the bank holds {len(embeddings)} entries, where FAISS would be faster, but "
                "faiss is not installed: using the exact torch search (pip install "
                "'camkit[faiss]' for the approximate FAISS index)", RuntimeWarning, stacklevel=2)
            backend = "torch"
    if backend == "torch":
        return TorchIndex(embeddings)
    kind = "flat" if backend == "faiss-flat" else "ivf"
    return FaissIndex(embeddings, kind, **faiss_options)


def kmeans(points: Tensor, n_clusters: int, iterations: int = 50,
           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with k-means++ seeding (Arthur & Vassilvitskii 2007):
    ``(N, D)`` → ``(centroids (n_clusters, D), assignment (N,) int64)``. A cluster that runs
    empty keeps its previous centroid. Stops early when the assignment no longer changes."""
    if not 1 <= n_clusters <= len(points):
        raise ValueError(f"n_clusters={n_clusters} must be between 1 and the number of points "
                         f"({len(points)})")
    generator = generator or torch.Generator().manual_seed(0)
    points = points.float().cpu()
    first = torch.randint(len(points), (1,), generator=generator)
    centroids = points[first]
    nearest = squared_distances(points, centroids).squeeze(1)
    for _ in range(1, n_clusters):
        pick = torch.multinomial(nearest.double() + 1e-12, 1, generator=generator)
        centroids = torch.cat([centroids, points[pick]])
        nearest = torch.minimum(nearest, squared_distances(points, points[pick]).squeeze(1))
    assignment = torch.full((len(points),), -1, dtype=torch.long)
    for _ in range(iterations):
        new = squared_distances(points, centroids).argmin(dim=1)
        if torch.equal(new, assignment):
            break
        assignment = new
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=n_clusters)[:, None]
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids, assignment
