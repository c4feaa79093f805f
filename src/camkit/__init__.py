"""camkit: class activation maps for PyTorch image models."""

import importlib
from typing import TYPE_CHECKING, Any

from . import batch, embedding, memory, methods, metrics, targets
from .api import CAMMethod, Explanation, available_methods, explain, method_class
from .evaluate import EvaluationResults, available_metrics, evaluate

__version__ = "0.1.0"

CAM = method_class("CAM", "cam")
GradCAM = method_class("GradCAM", "gradcam")
GradCAMPlusPlus = method_class("GradCAMPlusPlus", "gradcam++")
XGradCAM = method_class("XGradCAM", "xgradcam")
LayerCAM = method_class("LayerCAM", "layercam")
HiResCAM = method_class("HiResCAM", "hirescam")
GuidedBackprop = method_class("GuidedBackprop", "guided-backprop")
GuidedGradCAM = method_class("GuidedGradCAM", "guided-gradcam")
ScoreCAM = method_class("ScoreCAM", "scorecam")
SSCAM = method_class("SSCAM", "sscam")
ISCAM = method_class("ISCAM", "iscam")
AblationCAM = method_class("AblationCAM", "ablationcam")
EigenCAM = method_class("EigenCAM", "eigencam")
EigenGradCAM = method_class("EigenGradCAM", "eigengradcam")
Occlusion = method_class("Occlusion", "occlusion")
MCAM = method_class("MCAM", "mcam")
EmbeddingGradCAM = method_class("EmbeddingGradCAM", "embedding-gradcam")

__all__ = [
    "CAM", "ISCAM", "MCAM", "SSCAM", "AblationCAM", "CAMMethod", "EigenCAM", "EigenGradCAM",
    "EmbeddingGradCAM", "EvaluationResults", "Explanation", "GradCAM", "GradCAMPlusPlus",
    "GuidedBackprop", "GuidedGradCAM", "HiResCAM", "LayerCAM", "Occlusion", "ScoreCAM", "XGradCAM",
    "available_methods", "available_metrics", "batch", "embedding", "evaluate", "explain",
    "explanation_to_html", "memory", "method_class", "methods", "metrics", "report",
    "save_explanation", "serve", "targets",
]

_FROM_REPORT = ("explanation_to_html", "save_explanation")

if TYPE_CHECKING:  # what the lazy names below are, for type checkers
    from .serve import serve
    from .viz import report
    from .viz.report import explanation_to_html, save_explanation
else:

    def __getattr__(name: str) -> Any:
        """``camkit.report`` and its functions, and ``camkit.serve``, imported on first use:
        ``import camkit`` loads no HTML and no web server."""
        if name == "serve":  # the package, callable as camkit.serve(...)
            return importlib.import_module(".serve", __name__)
        if name == "report" or name in _FROM_REPORT:
            from .viz import report

            return report if name == "report" else getattr(report, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
