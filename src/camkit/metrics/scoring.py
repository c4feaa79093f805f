"""The one scoring model every metric reads, and the confidence it reports.

ALGORITHMS §4.1 choices 1 and 4: every method is judged by the same model (the explained
network with its own classifier, unless another scoring model is given), and a "confidence"
is the softmax probability for single-label tasks, the sigmoid probability for multi-label
tasks, or any function of the logits the user passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..capture.hooks import borrowed
from ..targets import logits_of

Confidence = Callable[[Tensor], Tensor]  # logits (n, n_classes) -> (n, n_classes)
TASKS = ("single-label", "multi-label")


def softmax_confidence(logits: Tensor) -> Tensor:
    """Single-label confidence: ``softmax(s)_c``, ``(n, n_classes)`` → ``(n, n_classes)``."""
    return logits.softmax(dim=1)


def sigmoid_confidence(logits: Tensor) -> Tensor:
    """Multi-label confidence: ``σ(s_c)``, ``(n, n_classes)`` → ``(n, n_classes)``."""
    return logits.sigmoid()


def logit_confidence(logits: Tensor) -> Tensor:
    """The raw logits ``s_c`` themselves (for regression-like heads)."""
    return logits


CONFIDENCES: dict[str, Confidence] = {
    "softmax": softmax_confidence,
    "sigmoid": sigmoid_confidence,
    "logit": logit_confidence,
}
TASK_CONFIDENCE = {"single-label": "softmax", "multi-label": "sigmoid"}


def confidence_function(
    spec: str | Confidence | None = None, task: str = "single-label"
) -> Confidence:
    """Resolve a confidence: a callable is used as is; a name from :data:`CONFIDENCES`;
    ``None`` picks the task's (softmax for single-label, sigmoid for multi-label)."""
    if callable(spec):
        return spec
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    name = TASK_CONFIDENCE[task] if spec is None else spec
    if name not in CONFIDENCES:
        raise ValueError(
            f"unknown confidence {name!r}; use one of {sorted(CONFIDENCES)} or a function "
            "logits (n, n_classes) -> (n, n_classes)"
        )
    return CONFIDENCES[name]


@dataclass
class Scorer:
    """Confidences of chosen classes on many images, in forward passes of at most
    ``max_batch`` images, without gradients, the model borrowed in eval mode."""

    model: nn.Module
    confidence: Confidence = softmax_confidence
    max_batch: int = 32

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")

    def rows(self, n: int, make: Callable[[Tensor], Tensor], classes: Tensor) -> Tensor:
        """``(n, J)`` confidences: row ``i`` scores classes ``classes[i]`` (``(n, J)`` long) on
        the image ``make(index)[j]`` for ``index[j] = i``; ``make`` builds a chunk of images
        ``(m, C, H, W)`` from a ``(m,)`` index tensor, so no more than ``max_batch`` images
        exist at once."""
        parts = []
        with borrowed(self.model), torch.no_grad():
            for start in range(0, n, self.max_batch):
                index = torch.arange(start, min(n, start + self.max_batch), device=classes.device)
                logits = logits_of(self.model(make(index)))
                logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
                parts.append(self.confidence(logits).gather(1, classes[index].to(logits.device)))
        return torch.cat(parts).to(classes.device)

    def __call__(self, x: Tensor, classes: Tensor) -> Tensor:
        """``(B, J)`` confidences of ``classes`` ``(B, J)`` on the images ``x`` ``(B, C, H, W)``."""
        return self.rows(x.shape[0], lambda index: x[index], classes)


def make_scorer(
    model: nn.Module, confidence: str | Confidence | None = "softmax", max_batch: int = 32
) -> Scorer:
    """A :class:`Scorer` for ``model`` with a confidence resolved by
    :func:`confidence_function` (``None`` = softmax)."""
    return Scorer(model, confidence_function(confidence), max_batch)


def check_inputs(x: Tensor, maps: Tensor, targets: Tensor) -> None:
    """Refuse mismatched metric inputs: ``x`` ``(B, C, H, W)``, ``maps`` ``(B, K, H, W)``,
    ``targets`` ``(B, K)`` integer class indices."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"x must be an image batch (B, C, H, W), got {_shape(x)}; metrics "
                         "take one input tensor")
    if not isinstance(maps, Tensor) or maps.dim() != 4:
        raise ValueError(f"maps must be (B, K, H, W), got {_shape(maps)} (use expl[method])")
    if maps.shape[0] != x.shape[0] or maps.shape[-2:] != x.shape[-2:]:
        raise ValueError(
            f"maps {tuple(maps.shape)} do not fit x {tuple(x.shape)}: they need the same batch "
            "size and the input's resolution (use expl[method], not expl.raw[method])"
        )
    if not isinstance(targets, Tensor) or targets.is_floating_point():
        raise TypeError("targets must be a (B, K) integer tensor of class indices "
                        "(e.g. expl.targets)")
    if tuple(targets.shape) != tuple(maps.shape[:2]):
        raise ValueError(f"targets {_shape(targets)} must be (B, K) = {tuple(maps.shape[:2])}, "
                         "one class per map")


def _shape(t: object) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__
