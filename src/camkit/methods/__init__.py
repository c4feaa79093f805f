"""The methods; importing this package registers every one of them."""

from . import cam, gradient, guided  # noqa: F401  (registration side effects)
from .registry import LayerPass, Method, available_methods, get_method, register

__all__ = ["LayerPass", "Method", "available_methods", "get_method", "register"]
