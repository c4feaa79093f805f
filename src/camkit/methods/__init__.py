"""The methods' maths; importing this package registers every one of them (M-CAM and
embedding Grad-CAM register from their own packages, :mod:`camkit.memory` and
:mod:`camkit.embedding`, which ``import camkit`` loads)."""

from ..capture import LayerPass
from . import (  # noqa: F401  (registration side effects)
    ablation,
    cam,
    eigen,
    fem,
    fullgrad,
    gradient,
    guided,
    legrad,
    occlusion,
    rise,
    score,
    shapley,
    smooth,
)
from .registry import Method, available_methods, get_method, register

__all__ = ["LayerPass", "Method", "available_methods", "get_method", "register"]
