"""camkit: class activation maps for PyTorch image models."""

import importlib
from typing import TYPE_CHECKING, Any

from . import embedding, memory, methods, metrics, targets
from .api import available_methods, explain
from .classes import CAMMethod, method_class
from .detection import BoxScoreTarget
from .dff import Concepts, factorize
from .evaluate import EvaluationResults, available_metrics, evaluate
from .explanation import Explanation
from .heads import (
    BinaryClassifierOutputTarget,
    ClassifierOutputSigmoidTarget,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    RawScoresOutputTarget,
)
from .segmentation import SemanticSegmentationTarget
from .version import __version__ as __version__

CAM = method_class("CAM", "cam")
GradCAM = method_class("GradCAM", "gradcam")
FullGrad = method_class("FullGrad", "fullgrad")
LeGrad = method_class("LeGrad", "legrad")
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
MCAMGradCAM = method_class("MCAMGradCAM", "mcam-gradcam")
EmbeddingGradCAM = method_class("EmbeddingGradCAM", "embedding-gradcam")

__all__ = [
    "AblationCAM", "BinaryClassifierOutputTarget", "BoxScoreTarget", "CAM", "CAMMethod",
    "ClassifierOutputSigmoidTarget", "ClassifierOutputSoftmaxTarget",
    "ClassifierOutputTarget", "Concepts", "EigenCAM",
    "EigenGradCAM", "EmbeddingGradCAM", "EvaluationResults", "Explanation", "FEM", "FullGrad",
    "GradCAM", "GradCAMElementWise", "GradCAMPlusPlus", "GuidedBackprop", "GuidedGradCAM",
    "HiResCAM", "ISCAM", "KPCACAM", "LayerCAM", "LeGrad", "MCAM", "MCAMGradCAM", "Occlusion",
    "RISE", "RawScoresOutputTarget", "SSCAM", "ScoreCAM", "SemanticSegmentationTarget",
    "ShapleyCAM", "SmoothGradCAMPlusPlus", "XGradCAM", "available_methods", "available_metrics",
    "batch",
    "embedding", "evaluate", "explain", "explanation_to_html", "factorize", "memory",
    "method_class", "methods", "metrics", "report", "save_explanation", "serve", "targets",
]

# Applications, imported on first use: `import camkit` loads no HTML report, no job runner
# and no web server.
_LAZY = {
    "batch": ("camkit.batch", None),
    "report": ("camkit.viz.report", None),
    "explanation_to_html": ("camkit.viz.report", "explanation_to_html"),
    "save_explanation": ("camkit.viz.report", "save_explanation"),
    "serve": ("camkit.explorer", "serve"),
}

if TYPE_CHECKING:  # what the lazy names below are, for type checkers
    from . import batch
    from .explorer import serve
    from .viz import report
    from .viz.report import explanation_to_html, save_explanation
else:

    def __getattr__(name: str) -> Any:
        """The names of :data:`_LAZY`, imported on first use."""
        if name not in _LAZY:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        module_name, attribute = _LAZY[name]
        module = importlib.import_module(module_name)
        return module if attribute is None else getattr(module, attribute)
