"""Everything that touches a model, and nothing else does.

- :mod:`~camkit.capture.hooks`: the borrowed model (modes and ``requires_grad`` restored),
  forward hooks removed in ``finally``, the one capturing forward pass, the batched backward
  pass, guided ReLUs, re-scoring of new inputs or activations;
- :mod:`~camkit.capture.layers`: target-layer lookup, the automatic choice, token-to-grid
  reshapes;
- :mod:`~camkit.capture.features`: a layer's features for many images (no backward);
- :mod:`~camkit.capture.split` and :mod:`~camkit.capture.folding`: the network after a layer as
  its own module, and batch-norm-folded channels-last copies;
- :mod:`~camkit.capture.batches`: model evaluations in batches under a memory budget;
- :mod:`~camkit.capture.attention`: a transformer's attention probabilities in the graph;
- :mod:`~camkit.capture.detectors`: per-box gradients of detectors where their scores read
  the features (a proposal's RoI row, a pyramid level's head output);
- :mod:`~camkit.capture.layer_pass`: what one pass hands to every method.
"""

from .attention import BlockAttention, recording_attention
from .batches import (
    BATCH_OPTIONS,
    DEFAULT_MAX_BATCH_MEMORY,
    Batching,
    forward_bytes,
    input_scorer,
    run_items,
)
from .detectors import DetectorRecord, detector_gradients, recording_detector
from .folding import forget, forward_model
from .hooks import (
    Capture,
    LayerNotReachedError,
    batched_grad,
    batched_grads,
    borrowed,
    layer_gradients_for_inputs,
    layer_hook,
    model_lock,
    module_output_gradients,
    rescorer_for_activations,
    rescorer_for_inputs,
    run_forward,
    run_forward_layers,
)
from .layer_pass import LayerPass
from .layers import LayerSpec, Reshape, choose_layer, find_layer, module_name, to_spatial

__all__ = [
    "BATCH_OPTIONS", "Batching", "BlockAttention", "Capture", "DEFAULT_MAX_BATCH_MEMORY",
    "DetectorRecord", "LayerNotReachedError", "LayerPass", "LayerSpec", "Reshape",
    "batched_grad", "batched_grads", "borrowed", "choose_layer", "detector_gradients",
    "find_layer", "forget", "forward_bytes", "forward_model", "input_scorer",
    "layer_gradients_for_inputs", "layer_hook", "model_lock", "module_name",
    "module_output_gradients", "recording_attention", "recording_detector",
    "rescorer_for_activations", "rescorer_for_inputs", "run_forward", "run_forward_layers",
    "run_items", "to_spatial",
]
