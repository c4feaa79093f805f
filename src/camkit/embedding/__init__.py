"""Grad-CAM for embedding networks (Chen, Chen, Hajimirsadeghi & Mori, WACV 2020;
ALGORITHMS §2): triplet grad-weights, the weight bank and explanation by weight transfer.

- ``triplet_gradcam(model, layer, anchor, positive, negative)``: a direct explanation from
  the triplet loss; ``explain_similarity(model, a, b)``: "why are these similar?" both ways;
- ``fit_weight_bank(model, layer, images, labels, ...)`` → :class:`WeightBank`
  (``bank.save(path)`` / ``WeightBank.load(path)``);
- ``camkit.explain(model, x, methods=["embedding-gradcam"], layer=..., bank=bank)``: one
  forward pass, a neighbour look-up, a weighted sum; no backward pass.
"""

from . import method  # noqa: F401  (registers the method)
from .bank import FORMAT_VERSION, Clusters, WeightBank, average_top_m, search_space
from .direct import explain_similarity, triplet_gradcam
from .fit import embed, fit_weight_bank, image_batch
from .search import (
    AUTO_FAISS_MIN,
    FaissIndex,
    NeighbourIndex,
    TorchIndex,
    faiss_available,
    kmeans,
    make_index,
)
from .transfer import Transferred, transfer_raw_maps, transfer_weights
from .triplets import Triplets, as_labels, sample_triplets, squared_distances, triplet_loss
from .weights import (
    AnchorPass,
    channel_map,
    dense_weights,
    embedding_of,
    gradcam_weights,
    gradcampp_weights,
    top_m,
    triplet_weights,
)

__all__ = [
    "AUTO_FAISS_MIN", "FORMAT_VERSION", "AnchorPass", "Clusters", "FaissIndex",
    "NeighbourIndex", "TorchIndex", "Transferred", "Triplets", "WeightBank", "as_labels",
    "average_top_m", "channel_map", "dense_weights", "embed", "embedding_of",
    "explain_similarity", "faiss_available", "fit_weight_bank", "gradcam_weights",
    "gradcampp_weights", "image_batch", "kmeans", "make_index",
    "sample_triplets", "search_space", "squared_distances", "top_m", "transfer_raw_maps",
    "transfer_weights", "triplet_gradcam", "triplet_loss", "triplet_weights",
]
