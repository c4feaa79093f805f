"""Guided backpropagation and Guided Grad-CAM.

The gradients at the input come from the engine's one pass with guided ReLUs (see
``camkit.capture.hooks``): ``(B, K, C_in, H, W)``. A map per target is their largest magnitude
over colour channels (the saliency convention of Simonyan et al. 2014); the full gradient
image stays in ``Explanation.details["guided-backprop"]``.
"""

from __future__ import annotations

from torch import Tensor

from ..capture import LayerPass
from ..postprocess import upsample
from .gradient import gradcam
from .registry import GRADIENTS, INPUT_GRADIENTS, Method, register


def guided_saliency(input_gradients: Tensor) -> Tensor:
    """``(B, K, C_in, H, W)`` guided gradients → ``(B, K, H, W)``: ``max_c |g_c|``."""
    return input_gradients.abs().amax(dim=2)


def guided_gradcam(input_gradients: Tensor, gradcam_maps: Tensor) -> Tensor:
    """Guided Grad-CAM (Selvaraju et al. 2017, §3): guided backpropagation multiplied
    point-wise by the ReLU'd Grad-CAM map upsampled to the input, ``(B, K, H, W)``.
    The Grad-CAM factor is non-negative, so ``max_c |g_c · L| = L · max_c |g_c|``."""
    height, width = input_gradients.shape[-2:]
    cam = upsample(gradcam_maps.clamp(min=0), (height, width))
    return guided_saliency(input_gradients) * cam


def _guided_backprop(layer_pass: LayerPass) -> Tensor:
    layer_pass.notes["guided-backprop"] = {"gradients": layer_pass.guided_gradients}
    return guided_saliency(layer_pass.guided_gradients)


def _guided_gradcam(layer_pass: LayerPass) -> Tensor:
    cam = gradcam(layer_pass.activations, layer_pass.layer_gradients)
    return guided_gradcam(layer_pass.guided_gradients, cam)


register(Method(
    "guided-backprop", "input gradients through ReLUs that pass only positive gradients",
    "Springenberg et al., Striving for Simplicity, ICLR-W 2015 (arXiv:1412.6806)",
    _guided_backprop, frozenset({INPUT_GRADIENTS}), relu=False, maths=(guided_saliency,),
))
register(Method(
    "guided-gradcam", "guided backpropagation times the upsampled Grad-CAM map",
    "Selvaraju et al., Grad-CAM, ICCV 2017 (arXiv:1610.02391)",
    _guided_gradcam, frozenset({GRADIENTS, INPUT_GRADIENTS}), relu=False,
    maths=(guided_gradcam, guided_saliency),
))
