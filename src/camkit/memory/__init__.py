"""M-CAM (Kim & Ro, BMVC 2021): the bias-reducing memory, its training, and its maps.

``train_memory(model, layer, data, num_classes)`` returns a :class:`BiasReducingMemory`;
``memory.save(path)`` / ``BiasReducingMemory.load(path)``; ``mcam_raw_maps`` is the map;
``camkit.explain(..., methods=["mcam"], memory=memory)`` uses it through the engine.
"""

from ..capture.features import layer_features
from . import method  # noqa: F401  (registers the method)
from .diagnostics import collapse_reasons, memory_diagnostics
from .explain import (
    SlotNoise,
    SlotSearch,
    address_gradient,
    channel_similarity,
    channel_weights,
    draw_slot_noise,
    key_gradient,
    mcam_map,
    mcam_raw_maps,
    slot_search,
    value_gradient,
)
from .features import extract_features
from .losses import address_loss, classifier_loss, kl_divergence, loss_terms, sparse_loss
from .module import (
    FORMAT_VERSION,
    BiasReducingMemory,
    TrainingAddresses,
    cosine_matrix,
    load_memory,
    read_config,
    save_memory,
)
from .training import average_precision, mean_average_precision, train_memory

__all__ = [
    "FORMAT_VERSION", "BiasReducingMemory", "SlotNoise", "SlotSearch", "TrainingAddresses",
    "address_gradient", "address_loss", "average_precision", "channel_similarity",
    "channel_weights", "classifier_loss", "collapse_reasons", "cosine_matrix", "draw_slot_noise",
    "extract_features", "key_gradient", "kl_divergence", "layer_features", "load_memory",
    "loss_terms", "mcam_map", "mcam_raw_maps", "mean_average_precision", "memory_diagnostics",
    "read_config", "save_memory", "slot_search", "sparse_loss", "train_memory", "value_gradient",
]
