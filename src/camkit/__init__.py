"""camkit: class activation maps for PyTorch image models."""

from . import methods, targets
from .api import CAMMethod, Explanation, available_methods, explain, method_class

__version__ = "0.1.0"

CAM = method_class("CAM", "cam")
GradCAM = method_class("GradCAM", "gradcam")
GradCAMPlusPlus = method_class("GradCAMPlusPlus", "gradcam++")
XGradCAM = method_class("XGradCAM", "xgradcam")
LayerCAM = method_class("LayerCAM", "layercam")
HiResCAM = method_class("HiResCAM", "hirescam")
GuidedBackprop = method_class("GuidedBackprop", "guided-backprop")
GuidedGradCAM = method_class("GuidedGradCAM", "guided-gradcam")

__all__ = [
    "CAM", "CAMMethod", "Explanation", "GradCAM", "GradCAMPlusPlus", "GuidedBackprop",
    "GuidedGradCAM", "HiResCAM", "LayerCAM", "XGradCAM", "available_methods", "explain",
    "method_class", "methods", "targets",
]
