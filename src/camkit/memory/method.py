"""M-CAM (Kim & Ro, BMVC 2021) as a registered method: the maps come from a trained
:class:`~camkit.memory.BiasReducingMemory` instead of gradients (ALGORITHMS §1.4-§1.6)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..capture import LayerPass
from ..methods.registry import Method, register
from .explain import channel_similarity, channel_weights, mcam_map, mcam_raw_maps, slot_search
from .module import BiasReducingMemory


def _compute(layer_pass: LayerPass, memory: BiasReducingMemory | None = None) -> Tensor:
    """Raw M-CAM maps ``(B, K, h, w)`` for the pass's class targets; the slot search uses
    ``layer_pass.generator`` (seeded by ``explain(seed=...)``). Slots, ``found`` flags and
    weights go to ``layer_pass.notes["mcam"]``."""
    if memory is None:
        raise ValueError(
            "mcam needs a trained memory: camkit.explain(..., methods=['mcam'], memory=memory) "
            "with memory = camkit.memory.train_memory(...) or BiasReducingMemory.load(path)"
        )
    if not isinstance(memory, BiasReducingMemory):
        raise TypeError(f"memory must be a BiasReducingMemory, got {type(memory).__name__}")
    if layer_pass.target_indices is None:
        raise ValueError("mcam explains class indices of the memory's classifier; custom score "
                         "targets are not supported (pass class indices as targets)")
    generator = layer_pass.generator or torch.Generator().manual_seed(0)
    maps, info = mcam_raw_maps(memory, layer_pass.activations, layer_pass.target_indices,
                               generator)
    layer_pass.notes["mcam"] = info
    return maps


register(Method(
    "mcam", "channel weights exp(τ) from the slot of a trained bias-reducing memory (needs "
    "memory=)",
    "Kim & Ro, M-CAM: Visual Explanation of Challenging Conditioned Dataset with "
    "Bias-reducing Memory, BMVC 2021", _compute, options=("memory",),
    maths=(slot_search, channel_similarity, channel_weights, mcam_map),
    example=""">>> from camkit.memory import BiasReducingMemory
>>> memory = BiasReducingMemory(8, (32, 32), num_classes=4)  # train it: memory.train_memory
>>> maps = camkit.MCAM(model, layer="1", memory=memory)(x, targets=3)
>>> tuple(maps.shape)
(2, 1, 32, 32)
""",
))
