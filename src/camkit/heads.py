"""Targets for classifier heads under the names pytorch-grad-cam's users know: a class's
logit, softmax or sigmoid probability, a one-logit binary head, and the raw output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from .targets import Target, output_tensor, resolve, two_dimensional

ClassSpec = None | int | Sequence | Tensor  # the class forms of ``targets``


@dataclass
class ClassTarget(Target):
    """Classes in any class form of ``targets`` (``None``: the predicted one), read from
    :meth:`class_scores` of the model's score tensor instead of the logits themselves."""

    classes: ClassSpec = None

    def indices(self, outputs: Any) -> Tensor:
        scores = two_dimensional(self.class_scores(output_tensor(outputs)))
        return cast(Tensor, resolve(self.classes, scores, scores.shape[0]).indices)

    def scores(self, outputs: Any, rows: Tensor | None = None) -> Tensor:
        scores = two_dimensional(self.class_scores(output_tensor(outputs)))
        return scores.gather(1, self.indices(outputs))


class ClassifierOutputTarget(ClassTarget):
    """The logit ``z_c`` of each class: the same as giving the classes as ``targets``."""


class ClassifierOutputSoftmaxTarget(ClassTarget):
    """The softmax probability ``p_c = exp(z_c) / Σ_j exp(z_j)`` of each class, not its logit
    ``z_c`` (its gradient also pushes the other classes down)."""

    def class_scores(self, logits: Tensor) -> Tensor:
        return logits.softmax(dim=1)


class ClassifierOutputSigmoidTarget(ClassTarget):
    """The sigmoid probability ``σ(z_c)`` of each class, for multi-label heads whose classes
    are independent (give the ``(B, K)`` indices of the positive classes)."""

    def class_scores(self, logits: Tensor) -> Tensor:
        return logits.sigmoid()


class BinaryClassifierOutputTarget(ClassTarget):
    """A one-logit binary head (output ``z`` of shape ``(B,)`` or ``(B, 1)``): class 1 scores
    ``z``, class 0 scores ``−z``; ``None`` picks the predicted class (1 where ``z > 0``)."""

    def class_scores(self, logits: Tensor) -> Tensor:
        z = logits.reshape(logits.shape[0], -1)
        if z.shape[1] != 1:
            raise ValueError(
                f"a binary head has one logit per image, this model gives {z.shape[1]}; use "
                "class indices (or ClassifierOutputSigmoidTarget for multi-label heads)"
            )
        return torch.cat([-z, z], dim=1)


class RawScoresOutputTarget(Target):
    """The model's output as it is, one map per output value: a regression head, a single
    logit, an embedding (``(B,)``, ``(B, K)`` or any ``(B, ...)``, flattened)."""

    def scores(self, outputs: Any, rows: Tensor | None = None) -> Tensor:
        scores = output_tensor(outputs)
        return scores.reshape(scores.shape[0], -1)
