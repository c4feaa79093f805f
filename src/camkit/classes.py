"""One class per method: ``camkit.GradCAM(model, layer)(x, targets)``, documented like the
method's function (its maths, paper, options and an example)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from .api import explain
from .capture.layers import LayerSpec
from .explanation import Explanation
from .methods import registry
from .targets import TargetSpec


class CAMMethod:
    """One method bound to a model and a layer: ``maps = Method(model, layer)(x, targets)``."""

    method: ClassVar[str]

    def __init__(self, model: nn.Module, layer: LayerSpec = None, **options: Any) -> None:
        registry.get_method(self.method)
        self.model, self.layer, self.options = model, layer, options

    def explain(self, x: Tensor | Sequence[Tensor], targets: TargetSpec = None) -> Explanation:
        """The full :class:`Explanation` for ``x``."""
        return explain(self.model, x, targets, (self.method,), self.layer, **self.options)

    def __call__(self, x: Tensor | Sequence[Tensor], targets: TargetSpec = None) -> Tensor:
        """``(B, K, H, W)`` maps in [0, 1]."""
        return self.explain(x, targets)[self.method]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.layer!r})"


def method_class(class_name: str, method: str) -> type[CAMMethod]:
    """A :class:`CAMMethod` subclass for a registered method name, documented like a
    function: ``help(camkit.GradCAM)`` shows the maths, the paper, the options and an
    example."""
    return type(class_name, (CAMMethod,), {"method": method,
                                           "__doc__": class_doc(class_name, method)})


EXAMPLE = """\
>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
...                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
>>> x = torch.rand(2, 3, 32, 32)
"""


def class_doc(class_name: str, method: str) -> str:
    """The docstring of a method's class: summary, the equations of its pure functions,
    paper, options with their defaults, and a doctest."""
    m = registry.get_method(method)
    maths = "\n\n".join(_indented(inspect.getdoc(f) or f.__name__) for f in m.maths)
    defaults = {name: p.default for name, p in inspect.signature(m.compute).parameters.items()
                if p.default is not inspect.Parameter.empty}
    options = ", ".join(f"``{o}={defaults[o]!r}``" if o in defaults else f"``{o}``"
                        for o in m.options) or "none"
    example = m.example or (f">>> maps = camkit.{class_name}(model, layer=\"1\")(x, targets=3)\n"
                            ">>> tuple(maps.shape), bool(maps.min() >= 0), bool(maps.max() <= 1)"
                            "\n((2, 1, 32, 32), True, True)\n")
    return (f"{m.summary[0].upper()}{m.summary[1:]} (``{method}``).\n\n"
            f"``{class_name}(model, layer, **options)(x, targets)`` gives ``(B, K, H, W)`` maps "
            f"in [0, 1]; ``.explain(x, targets)`` the full :class:`Explanation`. It is "
            f"``camkit.explain(model, x, targets, [{method!r}], layer, **options)``.\n\n"
            f"Maths:\n\n{maths}\n\nPaper: {m.paper}.\n\nOptions: {options}.\n\n"
            f"Example:\n\n{_indented(EXAMPLE + example)}\n")


def _indented(text: str) -> str:
    return "\n".join("    " + line if line else "" for line in text.splitlines())
