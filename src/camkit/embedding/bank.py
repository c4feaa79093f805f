"""The weight bank: for every training image its embedding, top-M channel indices and
grad-weights (ALGORITHMS §2.4 step 1), saved as safetensors with a JSON config.

File format (DESIGN principle 7; the same container as M-CAM memories, written and read by
:mod:`camkit.artifacts`): the tensors

    embeddings (N, D) float32   search-space embeddings (L2-normalised when "normalized")
    channels   (N, M) int64     top-M channel indices, largest weight first
    weights    (N, M) float32   their averaged grad-weights
    labels     (N,)   int64     the training labels
    active     (N,)   int64     how many of the T sampled triplets had a positive loss
    fallback   (N,)   bool      no triplet of the sampling mode existed; random ones were used

and, in the safetensors header under ``"camkit"``, the JSON config::

    {"format": "camkit.weight-bank", "format_version": 1, "layer": ..., "num_channels": C,
     "embedding_dim": D, "top_m": M, "size": N, "normalized": true,
     "fit": {"triplets_per_image": T, "margin": m, "mode": ..., "sign": -1.0,
             "hinge": true, "variant": "gradcam", "seed": 0}}

Loading checks the format and version, every tensor's name, dtype and shape against the
config, the channel indices against ``num_channels`` and that the values are finite; it never
unpickles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from ..artifacts import Expected, check_format, check_tensors, read_safetensors, write_safetensors
from .search import NeighbourIndex, kmeans, make_index
from .weights import dense_weights, top_m

FORMAT = "camkit.weight-bank"
FORMAT_VERSION = 1
KIND = "embedding weight bank"
_DENSE_ROWS = 4096  # bank rows made dense at once when averaging cluster weights


def search_space(embeddings: Tensor, normalized: bool) -> Tensor:
    """Embeddings ``(n, D)`` as the bank compares them: L2-normalised when ``normalized``
    (ALGORITHMS §2.4: nearest neighbour on L2-normalised embeddings), float32."""
    embeddings = embeddings.detach().float()
    return F.normalize(embeddings, dim=1) if normalized else embeddings


def average_top_m(channels: Tensor, values: Tensor, num_channels: int, m: int
                  ) -> tuple[Tensor, Tensor]:
    """Average sparse top-M weights over a group, then re-take the top-M (ALGORITHMS §2.4
    options): ``(B, k, M)`` → ``(B, M)``, ``(B, M)``; weights are zero outside each member's
    own top-M."""
    return top_m(dense_weights(channels, values, num_channels).mean(dim=1), m)


@dataclass
class Clusters:
    """The k-means cluster variant (ALGORITHMS §2.4 item 4): ``centroids (n, D)`` in the search
    space, per-cluster ``channels (n, M)`` and ``weights (n, M)`` (the members' weights
    averaged, then the top-M), and ``sizes (n,)``."""

    centroids: Tensor
    channels: Tensor
    weights: Tensor
    sizes: Tensor


@dataclass(eq=False)
class WeightBank:
    """Per-training-image embeddings and top-M grad-weights (see the module docstring).

    Build it with :func:`camkit.embedding.fit_weight_bank`; ``bank.save(path)`` and
    ``WeightBank.load(path)``; used by ``camkit.explain(..., methods=["embedding-gradcam"],
    bank=bank)``.
    """

    embeddings: Tensor
    channels: Tensor
    weights: Tensor
    labels: Tensor
    active: Tensor
    fallback: Tensor
    layer: str
    num_channels: int
    normalized: bool = True
    fit_settings: dict[str, Any] = field(default_factory=dict)
    _indexes: dict[tuple, NeighbourIndex] = field(default_factory=dict, repr=False)
    _clusters: dict[tuple[int, int], Clusters] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_tensors(self.tensors(), self.shapes(), "the bank", KIND)
        _check_contents(self.tensors(), self.num_channels, "the bank")

    def __len__(self) -> int:
        return len(self.embeddings)

    def __repr__(self) -> str:
        return (f"WeightBank(size={len(self)}, layer={self.layer!r}, channels="
                f"{self.num_channels}, top_m={self.top_m}, embedding_dim={self.embedding_dim})")

    @property
    def embedding_dim(self) -> int:
        return self.embeddings.shape[1] if self.embeddings.dim() == 2 else 0

    @property
    def top_m(self) -> int:
        return self.channels.shape[1] if self.channels.dim() == 2 else 0

    def tensors(self) -> dict[str, Tensor]:
        return {"embeddings": self.embeddings, "channels": self.channels,
                "weights": self.weights, "labels": self.labels, "active": self.active,
                "fallback": self.fallback}

    def shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The expected ``(shape, dtype)`` of each tensor, from the sizes."""
        n, d, m = len(self.embeddings), self.embedding_dim, self.top_m
        return _expected(n, d, m)

    def config(self) -> dict[str, Any]:
        """The JSON config written with the tensors."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "layer": self.layer,
                "num_channels": self.num_channels, "embedding_dim": self.embedding_dim,
                "top_m": self.top_m, "size": len(self), "normalized": self.normalized,
                "fit": self.fit_settings}

    def save(self, path: str | Path) -> Path:
        """Write the bank to ``path`` (atomically; see the module docstring)."""
        return write_safetensors(self.tensors(), self.config(), path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> WeightBank:
        """Read a bank written by :meth:`save`, validated (module docstring)."""
        path = Path(path)
        tensors, header = read_safetensors(path, KIND, map_location)
        check_format(header, FORMAT, FORMAT_VERSION, path, KIND)
        try:
            sizes = (int(header["size"]), int(header["embedding_dim"]), int(header["top_m"]))
            layer, num_channels = str(header["layer"]), int(header["num_channels"])
            normalized, fit = bool(header["normalized"]), dict(header["fit"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: invalid {KIND} config ({err!r})") from err
        check_tensors(tensors, _expected(*sizes), path, KIND)
        _check_contents(tensors, num_channels, str(path))
        return cls(tensors["embeddings"], tensors["channels"], tensors["weights"],
                   tensors["labels"], tensors["active"], tensors["fallback"], layer=layer,
                   num_channels=num_channels, normalized=normalized, fit_settings=fit)

    def check_compatible(self, layer: str, num_channels: int, embedding_dim: int) -> None:
        """Refuse to explain with a bank fitted on another layer, channel count or
        embedding size (the message names both sides)."""
        problems = []
        if layer != self.layer:
            problems.append(f"layer {self.layer!r} (explained: {layer!r})")
        if num_channels != self.num_channels:
            problems.append(f"{self.num_channels} channels (the layer has {num_channels})")
        if embedding_dim != self.embedding_dim:
            problems.append(f"{self.embedding_dim}-d embeddings (the model gives "
                            f"{embedding_dim}-d)")
        if problems:
            raise ValueError("the weight bank was fitted on " + ", ".join(problems) + "; explain "
                             "the layer the bank was fitted on, or fit a bank for this model "
                             "and layer")

    def index(self, backend: str = "auto", **faiss_options: Any) -> NeighbourIndex:
        """The search index of ``backend`` over the bank (see
        :func:`camkit.embedding.search.make_index`), built on first use and kept."""
        key = (backend, tuple(sorted(faiss_options.items())))
        if key not in self._indexes:
            self._indexes[key] = make_index(self.embeddings, backend, **faiss_options)
        return self._indexes[key]

    def search(self, queries: Tensor, k: int = 1, backend: str = "auto",
               **faiss_options: Any) -> tuple[Tensor, Tensor]:
        """The ``k`` nearest bank entries of ``(B, D)`` query embeddings (put in the bank's
        search space first): ``(squared distances (B, k), indices (B, k))``."""
        index = self.index(backend, **faiss_options)
        return index.search(search_space(queries, self.normalized), k)

    def clusters(self, n_clusters: int = 50, seed: int = 0) -> Clusters:
        """k-means on the bank embeddings (the cluster variant, OP-20), computed once."""
        key = (n_clusters, seed)
        if key not in self._clusters:
            generator = torch.Generator().manual_seed(seed)
            centroids, assignment = kmeans(self.embeddings, n_clusters, generator=generator)
            sums = torch.zeros(n_clusters, self.num_channels)
            for start in range(0, len(self), _DENSE_ROWS):
                rows = slice(start, start + _DENSE_ROWS)
                dense = dense_weights(self.channels[rows].cpu(), self.weights[rows].cpu().float(),
                                      self.num_channels)
                sums.index_add_(0, assignment[rows], dense)
            sizes = torch.bincount(assignment, minlength=n_clusters)
            channels, weights = top_m(sums / sizes.clamp(min=1)[:, None], self.top_m)
            device = self.embeddings.device
            self._clusters[key] = Clusters(centroids.to(device), channels.to(device),
                                           weights.to(device), sizes.to(device))
        return self._clusters[key]


def _expected(n: int, d: int, m: int) -> Expected:
    return {"embeddings": ((n, d), torch.float32), "channels": ((n, m), torch.int64),
            "weights": ((n, m), torch.float32), "labels": ((n,), torch.int64),
            "active": ((n,), torch.int64), "fallback": ((n,), torch.bool)}


def _check_contents(tensors: dict[str, Tensor], num_channels: int, where: str) -> None:
    """What shapes cannot tell: a bank of at least one entry, channel indices in range."""
    embeddings = tensors["embeddings"]
    if len(embeddings) == 0:
        raise ValueError(f"{where}: an empty weight bank (embeddings {tuple(embeddings.shape)});"
                         " fit it on at least one image")
    channels = tensors["channels"]
    if channels.numel() and (channels.min() < 0 or channels.max() >= num_channels):
        raise ValueError(f"{where}: channel indices outside 0..{num_channels - 1}")
