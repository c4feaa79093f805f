"""The methods; importing this package registers every one of them."""

from . import (  # noqa: F401  (registration side effects)
    ablation,
    cam,
    eigen,
    embedding,
    gradient,
    guided,
    mcam,
    occlusion,
    score,
)
from .registry import LayerPass, Method, available_methods, get_method, register

__all__ = ["LayerPass", "Method", "available_methods", "get_method", "register"]
