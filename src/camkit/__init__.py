"""camkit: class activation maps for PyTorch image models."""

from . import batch, embedding, memory, methods, metrics, targets
from .api import CAMMethod, Explanation, available_methods, explain, method_class
from .dff import Concepts, factorize
from .evaluate import Results, available_metrics, evaluate
from .viz import report

__version__ = "0.1.0"

CAM = method_class("CAM", "cam")
GradCAM = method_class("GradCAM", "gradcam")
FullGrad = method_class("FullGrad", "fullgrad")
GradCAMPlusPlus = method_class("GradCAMPlusPlus", "gradcam++")
SmoothGradCAMPlusPlus = method_class("SmoothGradCAMPlusPlus", "smoothgradcam++")
XGradCAM = method_class("XGradCAM", "xgradcam")
ShapleyCAM = method_class("ShapleyCAM", "shapleycam")
LayerCAM = method_class("LayerCAM", "layercam")
HiResCAM = method_class("HiResCAM", "hirescam")
GradCAMElementWise = method_class("GradCAMElementWise", "gradcam-elementwise")
GuidedBackprop = method_class("GuidedBackprop", "guided-backprop")
GuidedGradCAM = method_class("GuidedGradCAM", "guided-gradcam")
ScoreCAM = method_class("ScoreCAM", "scorecam")
SSCAM = method_class("SSCAM", "sscam")
ISCAM = method_class("ISCAM", "iscam")
AblationCAM = method_class("AblationCAM", "ablationcam")
EigenCAM = method_class("EigenCAM", "eigencam")
EigenGradCAM = method_class("EigenGradCAM", "eigengradcam")
KPCACAM = method_class("KPCACAM", "kpcacam")
FEM = method_class("FEM", "fem")
Occlusion = method_class("Occlusion", "occlusion")
RISE = method_class("RISE", "rise")
MCAM = method_class("MCAM", "mcam")
EmbeddingGradCAM = method_class("EmbeddingGradCAM", "embedding-gradcam")

__all__ = [
    "AblationCAM", "CAM", "CAMMethod", "EigenCAM", "EigenGradCAM", "EmbeddingGradCAM",
    "Explanation", "FEM", "FullGrad", "GradCAM", "GradCAMElementWise", "GradCAMPlusPlus",
    "GuidedBackprop", "GuidedGradCAM", "HiResCAM", "ISCAM", "KPCACAM", "LayerCAM", "MCAM",
    "Occlusion", "RISE", "Results", "SSCAM", "ScoreCAM", "ShapleyCAM", "SmoothGradCAMPlusPlus",
    "XGradCAM", "Concepts", "factorize", "available_methods", "available_metrics", "batch",
    "embedding", "evaluate", "explain", "memory", "method_class", "methods", "metrics", "report",
    "targets",
]
