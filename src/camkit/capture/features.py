"""A layer's features for a batch of images, without gradients and without running the rest
of the network (feature caches for M-CAM training, nearest-neighbour banks)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .hooks import borrowed, layer_hook
from .layers import find_layer


class _StopForward(Exception):
    """Raised by the capture hook: nothing after the target layer needs to run."""


def layer_features(model: nn.Module, layer: str, images: Tensor) -> Tensor:
    """The output ``(B, c, h, w)`` float32 of ``model``'s module ``layer`` for ``images``.

    Runs the borrowed model in eval mode without gradients and stops the forward pass at the
    layer's first call (a module called several times, like a shared ReLU, gives its first
    output); flags are restored and the hook removed, whatever happens."""
    captured: list[Tensor] = []

    def keep_and_stop(output: Tensor) -> Tensor:
        captured.append(output)
        raise _StopForward

    try:
        with borrowed(model), layer_hook(find_layer(model, layer), keep_and_stop), \
                torch.no_grad():
            model(images)
    except _StopForward:
        pass
    if not captured:
        raise RuntimeError(f"the forward pass never reached layer {layer!r}")
    output = captured[0]
    if output.dim() != 4:
        raise ValueError(f"layer {layer!r} outputs {tuple(output.shape)}; M-CAM needs a spatial "
                         "(B, c, h, w) layer, or pass a feature function that returns one")
    return output.float()
