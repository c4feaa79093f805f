"""M-CAM (Kim & Ro, BMVC 2021) as a registered method: the maps come from a trained
:class:`~camkit.memory.BiasReducingMemory` instead of gradients (ALGORITHMS §1.4-§1.6).

Options: ``memory`` (required), ``sharpness`` and ``base`` (see
:func:`camkit.memory.mcam_raw_maps`; the defaults ``1`` and ``"none"`` are the seed's
``w_i = exp(τ_i)``). ``base="gradcam"`` runs one backward pass through the network's tail.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ..capture import LayerPass
from ..methods.registry import Method, register
from .explain import mcam_raw_maps
from .module import BiasReducingMemory


def gradcam_weights(layer_pass: LayerPass) -> Tensor:
    """Grad-CAM's channel weights ``mean_{h,w} ∂s/∂A`` ``(B, K, C)``: from the pass's
    gradients when another method asked for them, else by one backward pass of
    ``rescore_activations``."""
    if layer_pass.gradients is not None:
        return layer_pass.gradients.mean(dim=(-2, -1))
    activations = layer_pass.activations.detach().requires_grad_(True)
    rows = torch.arange(len(activations), device=activations.device)
    with torch.enable_grad():
        scores = layer_pass.rescore_activations(activations, rows)  # (B, K)
        columns = [torch.autograd.grad(scores[:, k].sum(), activations, retain_graph=True)[0]
                   for k in range(scores.shape[1])]
    return torch.stack(columns, dim=1).mean(dim=(-2, -1))


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
    """Raw M-CAM maps ``(B, K, h, w)`` for the pass's class targets; the slot search uses
    ``layer_pass.generator`` (seeded by ``explain(seed=...)``). Slots, ``found`` flags,
    weights, sharpness and base go to ``layer_pass.notes["mcam"]`` (``expl.details``); maps
    whose slot search lowered no score are flagged there and warned about."""
    _check_memory(memory, layer_pass)
    assert memory is not None and layer_pass.target_indices is not None
    generator = layer_pass.generator or torch.Generator().manual_seed(0)
    gradients = gradcam_weights(layer_pass) if base == "gradcam" else None
    maps, info = mcam_raw_maps(memory, layer_pass.activations, layer_pass.target_indices,
                               generator, sharpness=sharpness, base=base,
                               gradient_weights=gradients)
    missed = int((~info["found"]).sum())
    info["not_found"] = missed
    if missed:
        warnings.warn(f"M-CAM: for {missed} of {info['found'].numel()} (image, class) pairs no "
                      "memory slot lowers the class score; those maps use the slot of largest "
                      "drop anyway (expl.details['mcam']['found'] is False for them)",
                      RuntimeWarning, stacklevel=2)
    layer_pass.notes["mcam"] = info
    return maps


register(Method(
    "mcam", "channel weights exp(τ) from the slot of a trained bias-reducing memory (needs "
    "memory=; options sharpness=, base=)",
    "Kim & Ro, M-CAM: Visual Explanation of Challenging Conditioned Dataset with "
    "Bias-reducing Memory, BMVC 2021", _compute, options=("memory", "sharpness", "base"),
))
