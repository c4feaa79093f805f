"""FullGrad (Srinivas & Fleuret, NeurIPS 2019): the full-gradient decomposition of the output
into the input-gradient term and one bias-gradient term per bias of the network, each made
a saliency map and summed. It explains the whole network, so the target layer is unused.

The biases are those of every ``Conv2d`` and every ``BatchNorm2d`` in eval mode (its effective
bias ``β − γ μ / √(σ² + ε)``, the bias of the affine map it computes) whose output is a map of
the images ``(B, C, h, w)``: a detector's box and mask heads run their convolutions on one
``(C, s, s)`` crop per proposal, which is no map of the image, and are left out (counted in
``notes["fullgrad"]["not_image_maps"]``); a bias whose output the target does not depend on
(an auxiliary head) adds nothing. Cost: one forward pass
from the input and one backward pass per target. Raw maps are at input resolution
``(B, K, H, W)``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..capture import LayerPass, module_output_gradients
from ..postprocess import minmax, upsample
from .registry import Method, register


def psi(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """FullGrad's post-processing ψ, channel by channel, summed over channels: ``|·|``, min-max
    per channel at its own resolution, then bilinear upsampling (linear, so the channels are
    summed first and upsampled once). ``(B, K, C, h, w)`` → ``(B, K, H, W)``."""
    b, k = maps.shape[:2]
    normalised = minmax(maps.abs().flatten(1, 2))[0].unflatten(1, (k, -1))
    return upsample(normalised.sum(dim=2), size)


def fullgrad(input_term: Tensor, bias_terms: Iterable[Tensor], size: tuple[int, int]) -> Tensor:
    """FullGrad saliency (eq. 4): ``S = ψ(∇ₓf ⊙ x) + Σ_l Σ_c ψ(∇_{z_l}f ⊙ b_l)_c`` with
    :func:`psi`, ``input_term`` ``(B, K, C_in, H, W)`` and each bias term ``(B, K, C_l, h, w)``
    → ``(B, K, H, W)``."""
    total = psi(input_term, size)
    for term in bias_terms:
        total = total + psi(term, size)
    return total


def effective_bias(module: nn.Module) -> Tensor | None:
    """The bias ``(C,)`` of a ``Conv2d``, or a ``BatchNorm2d``'s in eval mode; ``None`` when the
    module has none."""
    if isinstance(module, nn.Conv2d):
        return None if module.bias is None else module.bias.detach()
    if isinstance(module, nn.BatchNorm2d) and module.running_mean is not None:
        var = module.running_var
        assert var is not None
        scale = torch.rsqrt(var + module.eps)
        if module.weight is not None:
            scale = scale * module.weight.detach()
        bias = -module.running_mean * scale
        return bias if module.bias is None else bias + module.bias.detach()
    return None


def _fullgrad(layer_pass: LayerPass) -> Tensor:
    model, x = layer_pass.model, layer_pass.inputs[0]
    biased = [m for m in model.modules() if effective_bias(m) is not None]
    input_grad, module_grads = module_output_gradients(model, biased, layer_pass.inputs,
                                                       layer_pass.output_scorer)
    maps = [(module, grad) for module, grad in module_grads  # not a detector's per-RoI maps
            if grad.dim() == 5 and grad.shape[0] == x.shape[0]]
    terms = (grad * effective_bias(module).float()[:, None, None]  # type: ignore[union-attr]
             for module, grad in maps)
    layer_pass.notes["fullgrad"] = {"bias_terms": len(maps)}
    if len(maps) < len(module_grads):
        layer_pass.notes["fullgrad"]["not_image_maps"] = len(module_grads) - len(maps)
    return fullgrad(input_grad * x[:, None].float(), terms, layer_pass.input_size)


register(Method(
    "fullgrad", "input-gradient and every bias-gradient term of the network, summed as maps",
    "Srinivas & Fleuret, Full-Gradient Representation for Neural Network Visualization, "
    "NeurIPS 2019 (arXiv:1905.00780)", _fullgrad, maths=(fullgrad, psi),
))
