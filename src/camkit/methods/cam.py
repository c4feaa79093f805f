"""CAM (Zhou et al., CVPR 2016): the classifier's own weights on a GAP → FC head."""

from __future__ import annotations

from torch import Tensor, nn

from ..capture import LayerPass
from ..capture.layers import find_layer
from .gradient import weighted_sum
from .registry import Method, register


def cam(activations: Tensor, fc_weight: Tensor, target_indices: Tensor) -> Tensor:
    """``M_c = Σ_k w^c_k A^k`` (eq. 2; the bias is ignored).

    ``activations`` ``(B, C, h, w)``, ``fc_weight`` ``(n_classes, C)``, ``target_indices``
    ``(B, K)`` → ``(B, K, h, w)``."""
    return weighted_sum(fc_weight.float()[target_indices], activations)


def find_classifier(model: nn.Module, channels: int, fc: nn.Module | str | None) -> nn.Linear:
    """The fully connected layer after global average pooling: ``fc`` if given, else the last
    ``nn.Linear`` of the model whose input size equals the layer's channel count."""
    if isinstance(fc, str):
        fc = find_layer(model, fc)
    if fc is None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        fc = next((m for m in reversed(linears) if m.in_features == channels), None)
    if not isinstance(fc, nn.Linear) or fc.in_features != channels:
        raise ValueError(
            f"CAM needs a GAP → Linear head whose Linear takes the layer's {channels} channels; "
            "none was found. Pass fc= (the Linear module or its name), choose the last "
            "convolutional layer before global pooling, or use gradcam, which equals CAM up "
            "to scale on such heads and works on any head"
        )
    return fc


def _compute(layer_pass: LayerPass, fc: nn.Module | str | None = None) -> Tensor:
    if layer_pass.target_indices is None:
        raise ValueError("CAM explains class indices; custom score targets need gradcam")
    acts = layer_pass.activations
    classifier = find_classifier(layer_pass.model, acts.shape[1], fc)
    return cam(acts, classifier.weight.detach(), layer_pass.target_indices)


register(Method(
    "cam", "the classifier's weights on the pooled layer (GAP → FC heads only)",
    "Zhou et al., Learning Deep Features for Discriminative Localization, CVPR 2016 "
    "(arXiv:1512.04150)", _compute, options=("fc",), maths=(cam,),
))
