"""The one scoring model every metric reads, and the confidence it reports.

ALGORITHMS §4.1 choices 1 and 4: every method is judged by the same model (the explained
network with its own classifier, unless another scoring model is given), and a "confidence"
is the softmax probability for single-label tasks, the sigmoid probability for multi-label
tasks, or any function of the logits the user passes.

The many perturbed inputs a metric scores run through the engine's chunking
(:mod:`camkit.capture.batches`), with the perturbation methods' knobs: ``batch_size`` images
per forward pass, with ``batch_size=None`` as many as fit in ``max_batch_memory`` bytes, or
(the default, ``"auto"``) the size that scores fastest on this model and machine, found on
the first batches and remembered. They run through the model's folded channels-last copy
(:mod:`camkit.capture.folding`) when it reproduces the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..capture import folding
from ..capture.batches import (
    AUTO,
    DEFAULT_MAX_BATCH_MEMORY,
    Batching,
    BatchSize,
    forward_bytes,
    run_items,
)
from ..capture.hooks import borrowed
from ..targets import logits_of

Confidence = Callable[[Tensor], Tensor]  # logits (n, n_classes) -> (n, n_classes)
TASKS = ("single-label", "multi-label")
METRIC_BATCH_SIZE: BatchSize = AUTO  # images per forward pass of a metric: found by timing


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


def metric_batching(batch_size: BatchSize = METRIC_BATCH_SIZE,
                    max_batch_memory: float = DEFAULT_MAX_BATCH_MEMORY) -> Batching:
    """The engine's batching for the metrics' model evaluations (no progress bar of their
    own: :func:`camkit.evaluate` shows one for the whole run)."""
    return Batching(batch_size, max_batch_memory, progress=False)


@dataclass
class ConfidenceScorer:
    """Confidences of chosen classes on many images, without gradients, the model borrowed in
    eval mode, in forward passes sized by ``batching`` (the engine's
    :class:`~camkit.capture.batches.Batching`: ``batch_size`` images at a time, or with
    ``batch_size=None`` as many as fit in ``max_batch_memory`` bytes)."""

    model: nn.Module
    confidence: Confidence = softmax_confidence
    batching: Batching = field(default_factory=metric_batching)

    def rows(self, n: int, make: Callable[[Tensor], Tensor], classes: Tensor,
             like: Tensor) -> Tensor:
        """``(n, J)`` confidences: row ``i`` scores classes ``classes[i]`` (``(n, J)`` long) on
        the image ``make(index)[j]`` for ``index[j] = i``; ``make`` builds a chunk of images
        ``(m, C, H, W)`` from a ``(m,)`` index tensor, so no more than one chunk exists at
        once. ``like`` ``(B, C, H, W)``: images of the size ``make`` builds (for the memory
        estimate)."""

        def score(model: nn.Module, index: Tensor) -> Tensor:
            logits = logits_of(model(make(index)))
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            return self.confidence(logits).gather(1, classes[index].to(logits.device))

        key = ("metric", id(self.model), tuple(like.shape[1:]), like.dtype, like.device)
        size = self.batching.sizes(forward_bytes((like,)), key)
        with borrowed(self.model), torch.no_grad():
            model = folding.forward_model(self.model, {}, (like,))[0]
            scores = run_items(n, lambda index: score(model, index), size,
                               device=classes.device, desc="metric",
                               progress=self.batching.progress)
        return scores.to(classes.device)

    def __call__(self, x: Tensor, classes: Tensor) -> Tensor:
        """``(B, J)`` confidences of ``classes`` ``(B, J)`` on the images ``x`` ``(B, C, H, W)``."""
        return self.rows(x.shape[0], lambda index: x[index], classes, x)


def make_scorer(
    model: nn.Module, confidence: str | Confidence | None = "softmax",
    batch_size: BatchSize = METRIC_BATCH_SIZE, max_batch_memory: float = DEFAULT_MAX_BATCH_MEMORY,
) -> ConfidenceScorer:
    """A :class:`ConfidenceScorer` for ``model`` with a confidence resolved by
    :func:`confidence_function` (``None`` = softmax) and :func:`metric_batching`."""
    return ConfidenceScorer(model, confidence_function(confidence),
                  metric_batching(batch_size, max_batch_memory))


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
