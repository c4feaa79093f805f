"""Explaining by weight transfer (ALGORITHMS §2.4): the test image's embedding picks stored
grad-weights (its nearest bank image's, the average of its k nearest, or its k-means
cluster's), and the map is ``Σ_{k ∈ I_j} β_k(x_j) A^k(x*)`` on the test image's own
activation. No backward pass and no autograd graph: everything here is plain tensor
arithmetic on the one forward pass the engine already ran (without autograd).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .bank import WeightBank, average_top_m, search_space
from .search import TorchIndex
from .weights import channel_map

TRANSFERS = ("nn", "kmeans")


@dataclass
class Transferred:
    """The weights transferred to ``B`` test images.

    Attributes:
        channels: ``(B, M)`` channel indices.
        weights: ``(B, M)`` their weights.
        neighbours: ``(B, k)`` bank indices of the neighbours used (``transfer="nn"``) or
            ``(B, 1)`` cluster indices (``transfer="kmeans"``).
        distances: ``(B, k)`` squared L2 distances to them, in the bank's search space.
    """

    channels: Tensor
    weights: Tensor
    neighbours: Tensor
    distances: Tensor


def transfer_weights(bank: WeightBank, embeddings: Tensor, neighbours: int = 1,
                     transfer: str = "nn", n_clusters: int = 50, search: str = "auto"
                     ) -> Transferred:
    """Weights for ``(B, D)`` test embeddings.

    ``transfer="nn"``: the nearest bank image's top-M weights (ALGORITHMS §2.4 step 2) or,
    with ``neighbours=k > 1``, the k nearest images' weights averaged (zero outside each one's
    top-M), then the top-M again (§2.4 item 3). ``transfer="kmeans"``: the weights of the
    nearest of ``n_clusters`` k-means clusters (§2.4 item 4). ``search`` picks the
    nearest-neighbour back-end (:func:`camkit.embedding.search.make_index`)."""
    if transfer not in TRANSFERS:
        raise ValueError(f"unknown transfer {transfer!r}; choose one of {TRANSFERS}")
    if transfer == "kmeans":
        clusters = bank.clusters(n_clusters)
        queries = search_space(embeddings, bank.normalized)
        distances, nearest = TorchIndex(clusters.centroids).search(queries, 1)
        return Transferred(clusters.channels[nearest[:, 0]], clusters.weights[nearest[:, 0]],
                           nearest, distances)
    distances, nearest = bank.search(embeddings, neighbours, search)
    nearest_bank = nearest.to(bank.channels.device)
    if neighbours == 1:
        channels, weights = bank.channels[nearest_bank[:, 0]], bank.weights[nearest_bank[:, 0]]
    else:
        channels, weights = average_top_m(bank.channels[nearest_bank], bank.weights[nearest_bank],
                                          bank.num_channels, bank.top_m)
    return Transferred(channels, weights, nearest, distances)


def transfer_raw_maps(bank: WeightBank, activations: Tensor, embeddings: Tensor,
                      **options: object) -> tuple[Tensor, Transferred]:
    """Raw transfer maps ``(B, 1, h, w)`` from the test images' ``(B, C, h, w)`` activations
    and ``(B, D)`` embeddings (options of :func:`transfer_weights`)."""
    transferred = transfer_weights(bank, embeddings, **options)  # type: ignore[arg-type]
    device = activations.device
    raw = channel_map(activations, transferred.channels.to(device),
                      transferred.weights.to(device))
    return raw, transferred
