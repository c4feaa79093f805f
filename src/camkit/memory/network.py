"""A frozen network up to the memory's layer, followed by the memory's head: one model whose
classes are the memory's, so every method explains the same classes as M-CAM."""

from __future__ import annotations

from torch import Tensor, nn

from camkit.capture import find_layer, layer_hook
from camkit.memory.module import BiasReducingMemory


class _Stop(Exception):
    """Raised after the memory's layer: the rest of the network is not needed."""


class MemoryNetwork(nn.Module):
    """``network`` up to ``layer``, then ``memory``'s head: ``(B, 3, H, W)`` images →
    ``(B, n_cls)`` logits of the memory's classifier (differentiable in the layer's
    features, so gradient methods explain the same classes as M-CAM)."""

    def __init__(self, network: nn.Module, layer: str, memory: BiasReducingMemory) -> None:
        super().__init__()
        self.network, self.memory = network, memory
        self.layer = find_layer(network, layer)

    def forward(self, images: Tensor) -> Tensor:
        captured: list[Tensor] = []

        def keep_and_stop(output: Tensor) -> Tensor:
            captured.append(output)
            raise _Stop

        try:
            with layer_hook(self.layer, keep_and_stop):
                self.network(images)
        except _Stop:
            pass
        return self.memory(captured[0])
