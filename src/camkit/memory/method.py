"""M-CAM (Kim & Ro, BMVC 2021) as a registered method: the maps come from a trained
:class:`~camkit.memory.BiasReducingMemory` instead of gradients (ALGORITHMS §1.4-§1.6).

Options: ``memory`` (required), ``sharpness`` and ``base`` (``"none"``, ``"slot"``,
``"classifier"``, ``"value"`` or ``"address"``; see :func:`camkit.memory.mcam_raw_maps`; the
defaults ``1`` and ``"none"`` are the seed's ``w_i = exp(τ_i)``). ``mcam-gradcam`` is M-CAM
with OP-4's Grad-CAM base ``α_i · exp(s · τ_i)``, a method of its own because it needs the
engine's backward pass, which plain ``mcam`` never pays for.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ..capture import LayerPass
from ..methods.registry import GRADIENTS, Method, register
from .explain import (
    address_gradient,
    channel_similarity,
    channel_weights,
    classifier_weights,
    key_gradient,
    mcam_map,
    mcam_raw_maps,
    slot_profile,
    slot_search,
    value_gradient,
)
from .module import BiasReducingMemory


def _check_memory(memory: BiasReducingMemory | None, layer_pass: LayerPass) -> None:
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


def _compute(layer_pass: LayerPass, memory: BiasReducingMemory | None = None,
             sharpness: float = 1.0, base: str = "none") -> Tensor:
    if base == "gradcam":
        raise ValueError("mcam's base='gradcam' needs gradients: use the method 'mcam-gradcam'")
    return _maps(layer_pass, memory, sharpness, base, "mcam")


def _compute_gradcam(layer_pass: LayerPass, memory: BiasReducingMemory | None = None,
                     sharpness: float = 1.0) -> Tensor:
    """``mcam-gradcam``: M-CAM weights times Grad-CAM's ``α = mean_{h,w} ∂s/∂A``."""
    return _maps(layer_pass, memory, sharpness, "gradcam", "mcam-gradcam")


def _maps(layer_pass: LayerPass, memory: BiasReducingMemory | None, sharpness: float,
          base: str, name: str) -> Tensor:
    """Raw M-CAM maps ``(B, K, h, w)`` for the pass's class targets; the slot search uses
    ``layer_pass.generator`` (seeded by ``explain(seed=...)``). Slots, ``found`` flags (and
    ``not_found``, their count of False), weights, sharpness and base go to
    ``layer_pass.notes[name]`` (``expl.details``); maps whose slot search lowered no score are
    flagged there and, when the map depends on the found slot (every configuration but
    ``base="value"`` with ``sharpness=0``), warned about."""
    _check_memory(memory, layer_pass)
    assert memory is not None and layer_pass.target_indices is not None
    generator = layer_pass.generator or torch.Generator().manual_seed(0)
    gradients = None
    if base == "gradcam":
        assert layer_pass.gradients is not None
        gradients = layer_pass.gradients.mean(dim=(-2, -1))
    maps, info = mcam_raw_maps(memory, layer_pass.activations, layer_pass.target_indices,
                               generator, sharpness=sharpness, base=base,
                               gradient_weights=gradients)
    missed = int((~info["found"]).sum())
    info["not_found"] = missed
    uses_slot = sharpness != 0 or base != "value"
    if missed and uses_slot:
        warnings.warn(f"M-CAM: for {missed} of {info['found'].numel()} (image, class) pairs no "
                      "memory slot lowers the class score; those maps use the slot of largest "
                      f"drop anyway (expl.details[{name!r}]['found'] is False for them)",
                      RuntimeWarning, stacklevel=2)
    layer_pass.notes[name] = info
    return maps


register(Method(
    "mcam", "channel weights exp(τ) from the slot of a trained bias-reducing memory (needs "
    "memory=; options sharpness=, base=)",
    "Kim & Ro, M-CAM: Visual Explanation of Challenging Conditioned Dataset with "
    "Bias-reducing Memory, BMVC 2021", _compute, options=("memory", "sharpness", "base"),
    maths=(slot_search, channel_similarity, channel_weights, slot_profile, classifier_weights,
           key_gradient, value_gradient, address_gradient, mcam_map),
    example=""">>> from camkit.memory import BiasReducingMemory
>>> memory = BiasReducingMemory(8, (32, 32), num_classes=4)  # train it: memory.train_memory
>>> maps = camkit.MCAM(model, layer="1", memory=memory)(x, targets=3)
>>> tuple(maps.shape)
(2, 1, 32, 32)
""",
))
register(Method(
    "mcam-gradcam", "M-CAM weights exp(sharpness·τ) times Grad-CAM's channel weights (OP-4 base; "
    "needs memory=)",
    "Kim & Ro, BMVC 2021 (OP-4 reading); Selvaraju et al., ICCV 2017", _compute_gradcam,
    needs=frozenset({GRADIENTS}), options=("memory", "sharpness"),
    maths=(slot_search, channel_similarity, channel_weights, mcam_map),
    example=""">>> from camkit.memory import BiasReducingMemory
>>> memory = BiasReducingMemory(8, (32, 32), num_classes=4)  # train it: memory.train_memory
>>> maps = camkit.MCAMGradCAM(model, layer="1", memory=memory)(x, targets=3)
>>> tuple(maps.shape)
(2, 1, 32, 32)
""",
))
