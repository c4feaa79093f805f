"""Every target form, normalised to one thing: a ``(B, K)`` score function.

Forms accepted by ``camkit.explain(targets=...)``:

- ``None``: the top-1 predicted class of each image;
- an ``int``: that class for every image;
- a 1-D sequence or tensor of length ``B``: one class per image;
- a 2-D ``(B, K)`` sequence or tensor: ``K`` classes per image;
- a callable ``f(outputs) -> (B,)`` or ``(B, K)`` scores (regression, segmentation,
  similarity, ...). It must score each sample from that sample's own output only;
- a :class:`Target` object (:class:`TopK`, :class:`Similarity`, ...).
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor
from torch.nn import functional as F


def logits_of(outputs: Any) -> Tensor:
    """The class-score tensor ``(B, n_classes)`` inside whatever the model returned.

    Accepts a tensor, a tuple/list (first element), a dict (``"logits"`` or its only tensor)
    and any object with a ``.logits`` attribute (Hugging Face ``ModelOutput``).
    """
    return two_dimensional(output_tensor(outputs))


def output_tensor(outputs: Any) -> Tensor:
    """The score tensor inside whatever the model returned, of any shape (see
    :func:`logits_of`)."""
    if isinstance(outputs, Tensor):
        logits = outputs
    elif hasattr(outputs, "logits"):
        logits = outputs.logits
    elif isinstance(outputs, dict):
        tensors = {k: v for k, v in outputs.items() if isinstance(v, Tensor)}
        if "logits" in tensors:
            logits = tensors["logits"]
        elif len(tensors) == 1:
            logits = next(iter(tensors.values()))
        else:
            raise TypeError(
                f"the model returned a dict with keys {sorted(outputs)} and none is 'logits'; "
                "pass targets=f(outputs) that picks the scores"
            )
    elif isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], Tensor):
        logits = outputs[0]
    else:
        detector = isinstance(outputs, list) and outputs and isinstance(outputs[0], dict)
        hint = ("a detector's boxes are explained with targets=camkit.BoxScoreTarget(boxes, "
                "labels)" if detector else "pass targets=f(outputs) returning (B,) or (B, K) "
                "scores")
        raise TypeError(
            f"cannot find class scores in a model output of type {type(outputs).__name__}; "
            f"{hint}"
        )
    return logits


def two_dimensional(logits: Tensor) -> Tensor:
    """``logits`` when they are ``(B, n_classes)`` class scores, else a clear error."""
    if logits.dim() != 2:
        raise ValueError(
            f"class scores must be (B, n_classes), the model gave {tuple(logits.shape)}; "
            "pass targets=f(outputs) returning (B,) or (B, K) scores"
        )
    return logits


class Target(ABC):
    """A ready-made target: ``scores(outputs, rows) -> (n, K)`` and, for class targets,
    ``indices(outputs) -> (B, K)`` (``None`` otherwise).

    ``rows[i]`` (or ``i`` when ``rows`` is ``None``) is the original image that output row ``i``
    belongs to; perturbation methods score many modified copies of one image at once.
    """

    @abstractmethod
    def scores(self, outputs: Any, rows: Tensor | None = None) -> Tensor:
        """The ``(n, K)`` target scores of the output rows."""

    def indices(self, outputs: Any) -> Tensor | None:
        return None

    def bind(self, outputs: Any) -> Target:
        """This target fixed against the unperturbed ``outputs`` (e.g. a predicted region),
        so that scores of modified inputs keep measuring the same thing."""
        return self

    def class_scores(self, logits: Tensor) -> Tensor:
        """For class targets: the ``(B, n)`` scores the classes are read from, given the
        model's score tensor (the logits themselves by default)."""
        return logits


@dataclass
class TopK(Target):
    """The ``k`` highest-scoring classes of each image, best first."""

    k: int

    def indices(self, outputs: Any) -> Tensor:
        logits = logits_of(outputs)
        if not 1 <= self.k <= logits.shape[1]:
            raise ValueError(f"TopK(k={self.k}) needs 1 <= k <= {logits.shape[1]} classes")
        return logits.topk(self.k, dim=1).indices

    def scores(self, outputs: Any, rows: Tensor | None = None) -> Tensor:
        return logits_of(outputs).gather(1, self.indices(outputs))


@dataclass
class Similarity(Target):
    """Cosine similarity of each image's embedding to reference embeddings ``(B, D)`` or
    ``(B, K, D)``: "why does this image look like that one?"."""

    references: Tensor

    def scores(self, outputs: Any, rows: Tensor | None = None) -> Tensor:
        emb = logits_of(outputs)
        ref = self.references.to(emb.device, emb.dtype)
        ref = ref.unsqueeze(1) if ref.dim() == 2 else ref
        ref = ref if rows is None else ref[rows.to(ref.device)]
        return F.cosine_similarity(emb.unsqueeze(1), ref, dim=-1)


@dataclass(frozen=True)
class Finer(Target):
    """Finer-CAM's comparison target (Zhang et al., Finer-CAM, CVPR 2025, arXiv:2501.11309):
    explain what sets the main class ``c`` apart from the classes most like it.

    ``s = Σ_j p_j (y_c − α y_j) / Σ_j p_j`` over the comparison classes ``j``, the classes whose
    logits are closest to ``y_c`` (``ranks`` 1, 2, 3 of ``|y_j − y_c|``: rank 0 is ``c``),
    with ``p = softmax(y)``. ``main`` is one class for every image (``None``: each image's
    top-1); ``alpha=0`` gives ``s = y_c``, the plain class score. Used with any method
    (``camkit.explain(model, x, Finer(), ["gradcam"])`` is Finer-CAM). Methods that re-score
    perturbed copies need the classes fixed on the clean output: pass
    ``Finer().bound(model(x))``."""

    ranks: tuple[int, ...] = (1, 2, 3)
    alpha: float = 1.0
    main: int | None = None
    chosen: tuple[Tensor, Tensor] | None = None  # (B,) main and (B, J) comparison classes

    def classes(self, outputs: Any) -> tuple[Tensor, Tensor]:
        """The ``(B,)`` main and ``(B, J)`` comparison classes chosen on ``outputs``."""
        logits = logits_of(outputs).detach()
        if self.main is None:
            main = logits.argmax(dim=1)
        else:
            main = torch.full((len(logits),), self.main, dtype=torch.long, device=logits.device)
        distance = (logits - logits.gather(1, main[:, None])).abs()
        distance.scatter_(1, main[:, None], -1.0)  # the main class ranks first, ties or not
        return main, distance.argsort(dim=1)[:, list(self.ranks)]

    def bound(self, outputs: Any) -> Finer:
        """This target with its classes fixed on the clean ``outputs`` ``(B, n_classes)``."""
        return Finer(self.ranks, self.alpha, self.main, self.classes(outputs))

    def scores(self, outputs: Any, rows: Tensor | None = None) -> Tensor:
        if self.chosen is None and rows is not None:
            raise ValueError("this method re-scores perturbed inputs: fix Finer's classes on "
                             "the clean output first, targets=Finer().bound(model(x))")
        main, compared = self.classes(outputs) if self.chosen is None else self.chosen
        if rows is not None:
            main, compared = main[rows.to(main.device)], compared[rows.to(compared.device)]
        logits = logits_of(outputs)
        probs = logits.softmax(dim=1).gather(1, compared)
        gap = logits.gather(1, main[:, None]) - self.alpha * logits.gather(1, compared)
        total = probs.sum(dim=1).clamp(min=torch.finfo(probs.dtype).tiny)
        return ((probs * gap).sum(dim=1) / total)[:, None]


@dataclass
class PerImage(Target):
    """pytorch-grad-cam's form, one target object per image: image ``b`` is scored by
    ``targets[b]`` (each object scores the whole batch; ``b``'s rows are kept)."""

    targets: Sequence[Target]

    def bind(self, outputs: Any) -> PerImage:
        return PerImage([t.bind(outputs) for t in self.targets])

    def indices(self, outputs: Any) -> Tensor | None:
        per = [t.indices(outputs) for t in self.targets]
        if len({type(t).class_scores for t in self.targets}) > 1 or any(p is None for p in per):
            return None  # classes read from different scores: custom scores
        return self._per_image([cast(Tensor, p) for p in per], None)

    def class_scores(self, logits: Tensor) -> Tensor:
        return self.targets[0].class_scores(logits)

    def scores(self, outputs: Any, rows: Tensor | None = None) -> Tensor:
        return self._per_image([t.scores(outputs, rows) for t in self.targets], rows)

    @staticmethod
    def _per_image(per_target: list[Tensor], rows: Tensor | None) -> Tensor:
        """Row ``i`` of ``per_target[rows[i]]`` (each ``(n, K)``) for every row ``i``."""
        if len({tuple(p.shape) for p in per_target}) > 1:
            raise ValueError("each image's target object must give the same number of "
                             f"scores; they give {[p.shape[1] for p in per_target]}")
        stacked = torch.stack(per_target)
        n = torch.arange(stacked.shape[1], device=stacked.device)
        return stacked[n if rows is None else rows.to(stacked.device), n]


TargetSpec = None | int | Sequence | Tensor | Callable[[Any], Tensor] | Target
# Target scores read from a model output: ``(outputs, rows) -> (n, K)``, where row ``i`` of the
# output belongs to original image ``rows[i]`` (``rows=None``: the original batch).
Scores = Callable[[Any, Tensor | None], Tensor]


@dataclass
class ScoreFn:
    """Targets resolved against one batch.

    ``indices`` is the ``(B, K)`` class-index tensor (``None`` for custom scores);
    ``score(outputs, rows)`` gives the ``(n, K)`` target scores of a new output whose row ``i``
    belongs to original image ``rows[i]``.
    """

    indices: Tensor | None
    custom: Scores | None
    view: Callable[[Tensor], Tensor] | None = None  # logits -> the scores classes index into

    @property
    def k(self) -> int | None:
        return None if self.indices is None else self.indices.shape[1]

    def score(self, outputs: Any, rows: Tensor | None = None) -> Tensor:
        if self.custom is not None:
            return _as_bk(self.custom(outputs, rows), None)
        if self.indices is None:
            raise ValueError("a score function needs class indices or a custom score")
        logits = (logits_of(outputs) if self.view is None
                  else two_dimensional(self.view(output_tensor(outputs))))
        idx = self.indices if rows is None else self.indices[rows.to(self.indices.device)]
        return logits.gather(1, idx.to(logits.device))


def _as_bk(scores: Any, batch: int | None) -> Tensor:
    if not isinstance(scores, Tensor):
        raise TypeError(f"a target function must return a tensor, got {type(scores).__name__}")
    scores = scores.unsqueeze(1) if scores.dim() == 1 else scores
    if scores.dim() != 2 or (batch is not None and scores.shape[0] != batch):
        raise ValueError(
            f"a target function must return (B,) or (B, K) scores with B = {batch}, "
            f"got shape {tuple(scores.shape)}"
        )
    return scores


def resolve(targets: TargetSpec, outputs: Any, batch: int) -> ScoreFn:
    """Normalise ``targets`` for a batch of ``batch`` images whose model output is ``outputs``."""
    if isinstance(targets, (list, tuple)) and any(callable(t) or isinstance(t, Target)
                                                  for t in targets):
        targets = _per_image_objects(targets, batch)
    if isinstance(targets, Target):
        bound = targets.bind(outputs)
        indices = bound.indices(outputs)
        if indices is not None:
            n_classes = two_dimensional(bound.class_scores(output_tensor(outputs))).shape[1]
            return ScoreFn(_checked(indices, n_classes, batch), None, bound.class_scores)
        return ScoreFn(None, bound.scores)
    if callable(targets) and not isinstance(targets, Tensor):
        function = targets
        return ScoreFn(None, lambda outputs, rows: function(outputs))
    logits = logits_of(outputs)
    if targets is None:
        return ScoreFn(logits.argmax(dim=1, keepdim=True), None)
    if isinstance(targets, bool) or isinstance(targets, float):
        raise TypeError(f"targets must be class indices, got {targets!r}")
    if _holds_text(targets):
        raise TypeError(f"targets must be class indices, got the text {targets!r}; turn class "
                        "names into indices with camkit.targets.class_index(name, class_names)")
    if isinstance(targets, int):
        indices = torch.full((batch, 1), targets, dtype=torch.long, device=logits.device)
    else:
        indices = torch.as_tensor(targets, device=logits.device)
        if indices.is_floating_point() or indices.dtype == torch.bool:
            raise TypeError(
                f"targets must be integer class indices, got dtype {indices.dtype}; for "
                "multi-hot labels pass the indices of the positive classes"
            )
        if indices.dim() == 1:
            indices = indices.unsqueeze(1)
    return ScoreFn(_checked(indices.long(), logits.shape[1], batch), None)


def _per_image_objects(targets: Sequence[Any], batch: int) -> PerImage:
    """pytorch-grad-cam's list of one target object per image, checked."""
    if not all(isinstance(t, Target) for t in targets):
        raise TypeError("a list of target functions: a camkit function scores the whole "
                        "batch, f(outputs) -> (B,) or (B, K); give one such function, or one "
                        "target object (camkit.ClassifierOutputTarget, ...) per image")
    if len(targets) != batch:
        raise ValueError(f"got {len(targets)} target objects for a batch of {batch} images: "
                         "give one per image, or one object for the whole batch (e.g. "
                         "ClassifierOutputTarget([3, 5]))")
    return PerImage(list(targets))


def _holds_text(targets: Any) -> bool:
    """Whether ``targets`` is a string or a (nested) list or tuple holding one."""
    if isinstance(targets, str):
        return True
    return isinstance(targets, (list, tuple)) and any(map(_holds_text, targets))


def _checked(indices: Tensor, n_classes: int, batch: int) -> Tensor:
    if indices.dim() != 2 or indices.shape[0] != batch:
        raise ValueError(
            f"got targets of shape {tuple(indices.shape)} for a batch of {batch} images; give "
            f"one class per image (length {batch}), a (B, K) = ({batch}, K) table, an int, or "
            "None for the predicted class"
        )
    bad = (indices < 0) | (indices >= n_classes)
    if bad.any():
        raise ValueError(
            f"class index {int(indices[bad][0])} is out of range: the model has {n_classes} "
            f"classes (0..{n_classes - 1})"
        )
    return indices


def class_index(name_or_index: str | int, class_names: Sequence[str]) -> int:
    """Resolve a class given as an index (``3``, ``"3"``) or a name to its index.

    Names match case-insensitively: an exact name first, else a unique substring
    (``"golden"`` → ``"golden retriever"``; ``"crane"`` is the machine, 517, not
    ``"crane bird"``, 134, because an exact name wins).

    Raises:
        ValueError: index out of range, a name matching several classes (they are listed),
            or no match (the closest names are listed).
    """
    n = len(class_names)
    text = str(name_or_index).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < n:
            raise ValueError(f"class index {index} is out of range 0..{n - 1}")
        return index
    lowered = [c.lower() for c in class_names]
    query = text.lower()
    matches = [i for i, c in enumerate(lowered) if c == query]
    matches = matches or [i for i, c in enumerate(lowered) if query in c]
    if len(matches) == 1:
        return matches[0]
    if matches:
        listed = ", ".join(f"{i} ({class_names[i]})" for i in matches[:10])
        more = f" and {len(matches) - 10} more" if len(matches) > 10 else ""
        raise ValueError(f"class {text!r} is ambiguous: {listed}{more}; give the index")
    close = difflib.get_close_matches(query, lowered, n=5, cutoff=0.6)
    hint = ", ".join(f"{lowered.index(c)} ({class_names[lowered.index(c)]})" for c in close)
    raise ValueError(
        f"no class named {text!r}" + (f"; closest: {hint}" if hint else "; pass the index")
    )
