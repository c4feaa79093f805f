"""Grad-CAM for embedding networks by weight transfer (Chen et al., WACV 2020; ALGORITHMS
§2.4) as a registered method: the channel weights come from a fitted
:class:`~camkit.embedding.WeightBank` instead of gradients, so the engine runs the forward
pass without autograd and no backward pass at all."""

from __future__ import annotations

from torch import Tensor

from ..capture import LayerPass
from ..methods.registry import Method, register
from .bank import WeightBank
from .transfer import transfer_raw_maps, transfer_weights
from .triplets import triplet_loss
from .weights import channel_map, embedding_of, gradcam_weights, top_m


def _compute(layer_pass: LayerPass, bank: WeightBank | None = None, neighbours: int = 1,
             transfer: str = "nn", n_clusters: int = 50, search: str = "auto") -> Tensor:
    """Raw maps ``(B, K, h, w)`` from the weights of each image's nearest bank entries (the
    map does not depend on the targets: the same map for all ``K``). The neighbours and
    their distances and labels go to ``layer_pass.notes["embedding-gradcam"]``."""
    if bank is None:
        raise ValueError(
            "embedding-gradcam needs a weight bank: camkit.explain(..., methods="
            "['embedding-gradcam'], bank=bank) with bank = camkit.embedding.fit_weight_bank(...) "
            "or WeightBank.load(path)")
    if not isinstance(bank, WeightBank):
        raise TypeError(f"bank must be a camkit.embedding.WeightBank, got {type(bank).__name__}")
    embeddings = embedding_of(layer_pass.outputs)
    bank.check_compatible(layer_pass.layer_name, layer_pass.activations.shape[1],
                          embeddings.shape[1])
    raw, transferred = transfer_raw_maps(bank, layer_pass.activations, embeddings,
                                         neighbours=neighbours, transfer=transfer,
                                         n_clusters=n_clusters, search=search)
    labels = bank.labels.to(transferred.neighbours.device)
    layer_pass.notes["embedding-gradcam"] = {
        "neighbours": transferred.neighbours, "distances": transferred.distances,
        "neighbour_labels": labels[transferred.neighbours] if transfer == "nn" else None,
        "channels": transferred.channels, "weights": transferred.weights,
    }
    return raw.expand(-1, layer_pass.scores.shape[1], -1, -1)


register(Method(
    "embedding-gradcam", "triplet grad-weights of the nearest training image, transferred "
    "without backpropagation (needs bank=)",
    "Chen, Chen, Hajimirsadeghi & Mori, Adapting Grad-CAM for Embedding Networks, WACV 2020 "
    "(arXiv:2001.06538)", _compute,
    options=("bank", "neighbours", "transfer", "n_clusters", "search"),
    maths=(triplet_loss, gradcam_weights, top_m, transfer_weights, channel_map),
    example=""">>> from camkit.embedding import fit_weight_bank
>>> bank = fit_weight_bank(model, "1", torch.rand(4, 3, 32, 32), [0, 0, 1, 1],
...                        triplets_per_image=2, top_m=4, progress=False)
>>> maps = camkit.EmbeddingGradCAM(model, layer="1", bank=bank)(x)
>>> tuple(maps.shape)
(2, 1, 32, 32)
""",
))
