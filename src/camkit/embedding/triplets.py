"""The triplet loss and the sampling of triplets from labels (ALGORITHMS §2.2-§2.3, OP-17).

A triplet ``(a, p, n)`` has a positive ``p`` of the anchor's class (``p ≠ a``) and a negative
``n`` of another class. Sampling modes, with ``d_p = D(f_a, f_p)``, ``d_n = D(f_a, f_n)`` and
the margin ``m`` (``D`` the squared Euclidean distance of the loss):

- ``"active"`` (default): the loss is positive, ``d_n < d_p + m`` (semi-hard and hard);
- ``"semihard"``: ``d_p < d_n < d_p + m`` (Schroff et al., FaceNet, CVPR 2015, eq. 4);
- ``"hard"``: ``d_n < d_p``;
- ``"random"``: any positive and any negative.

Each anchor's ``T`` triplets are drawn uniformly, with replacement, from all its triplets of
the mode (a positive with probability proportional to the number of negatives it pairs with,
then one of those negatives uniformly). An anchor with no triplet of the mode (an easy,
well-separated image) gets ``T`` random triplets instead, and is flagged in
:attr:`Triplets.fallback`; with the hinge those contribute zero gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

MODES = ("active", "semihard", "hard", "random")
PAIR_ELEMENTS = 1 << 22  # anchors × bank entries held at once while sampling


def squared_distances(queries: Tensor, keys: Tensor) -> Tensor:
    """``D(q, e) = ‖q − e‖²`` for all pairs: ``(n, D)`` × ``(N, D)`` → ``(n, N)``, computed as
    ``‖q‖² − 2 q·e + ‖e‖²`` (clamped at 0 against round-off)."""
    sq = queries.pow(2).sum(1, keepdim=True) - 2 * queries @ keys.T + keys.pow(2).sum(1)
    return sq.clamp(min=0)


def triplet_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float,
                 hinge: bool = True) -> Tensor:
    """``L(a, p, n) = [D(f_a, f_p) − D(f_a, f_n) + m]_+`` with ``D`` the squared Euclidean
    distance (Chen et al., WACV 2020, the triplet loss ``L_tri`` as summarised in ALGORITHMS
    §2.2). Embeddings ``(..., D)`` (broadcast) → losses ``(...)``. ``hinge=False`` drops
    ``[·]_+`` (OP-17), so already-satisfied triplets keep a gradient."""
    difference = (anchor - positive).pow(2).sum(-1) - (anchor - negative).pow(2).sum(-1) + margin
    return difference.clamp(min=0) if hinge else difference


def as_labels(labels: Sequence[int] | Tensor, n: int | None = None) -> Tensor:
    """``labels`` as a 1-D int64 tensor, checked for triplets: every anchor needs a positive
    (its class has two or more images) and a negative (two or more classes)."""
    labels = torch.as_tensor(labels)
    labels = labels.long() if labels.numel() == 0 else labels
    if labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-D sequence of class integers, got "
                         f"{labels.dtype} {tuple(labels.shape)}")
    labels = labels.long()
    if n is not None and len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for {n} images; give one label per image")
    classes, counts = labels.unique(return_counts=True)
    if len(classes) < 2:
        found = "no labels" if len(classes) == 0 else f"only class {int(classes[0])}"
        raise ValueError(f"triplets need at least two classes (a negative is an image of another "
                         f"class), got {found}")
    single = classes[counts < 2]
    if len(single):
        raise ValueError(f"class(es) {single.tolist()[:10]} have a single image, so it has no "
                         "positive partner; drop those images or add more of their class")
    return labels


@dataclass
class Triplets:
    """Sampled triplets for ``n`` anchors, ``T`` per anchor.

    Attributes:
        positives: ``(n, T)`` int64 indices of the positives.
        negatives: ``(n, T)`` int64 indices of the negatives.
        fallback: ``(n,)`` bool, anchors that had no triplet of the requested mode and got
            random triplets instead.
    """

    positives: Tensor
    negatives: Tensor
    fallback: Tensor


def negative_rank_range(positive_distances: Tensor, sorted_negatives: Tensor,
                        negative_counts: Tensor, margin: float, mode: str
                        ) -> tuple[Tensor, Tensor]:
    """For each (anchor, positive), the ranks ``[low, high)`` in the anchor's ascending
    negative distances of the negatives that make a triplet of ``mode``.

    ``positive_distances`` ``(c, N)``: ``d_p`` for every candidate positive; ``sorted_negatives``
    ``(c, N)``: each anchor's negative distances ascending, non-negatives last as ``inf``;
    ``negative_counts`` ``(c,)``: number of negatives. Returns two ``(c, N)`` int64 tensors.
    """
    def below(bound: Tensor) -> Tensor:  # number of negatives with d_n < bound
        return torch.searchsorted(sorted_negatives, bound.contiguous(), side="left")

    everything = negative_counts[:, None].expand_as(positive_distances)
    zero = torch.zeros_like(everything)
    if mode == "active":
        return zero, below(positive_distances + margin)
    if mode == "semihard":
        above = torch.searchsorted(sorted_negatives, positive_distances.contiguous(), side="right")
        return above, below(positive_distances + margin)
    if mode == "hard":
        return zero, below(positive_distances)
    if mode == "random":
        return zero, everything
    raise ValueError(f"unknown triplet mode {mode!r}; choose one of {MODES}")


def _draw(low: Tensor, high: Tensor, positives: Tensor, order: Tensor, per_anchor: int,
          generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Draw ``per_anchor`` (positive, negative) pairs per row, uniformly over all pairs with
    the positive in ``positives`` and the negative's rank in ``[low, high)``."""
    counts = ((high - low).clamp(min=0) * positives).double()
    pos = torch.multinomial(counts, per_anchor, replacement=True, generator=generator)
    lo, hi = low.gather(1, pos), high.gather(1, pos)
    u = torch.rand(pos.shape, generator=generator, dtype=torch.float64)
    rank = (lo + (u * (hi - lo)).long()).clamp(max=order.shape[1] - 1)
    return pos, order.gather(1, rank)


def sample_triplets(embeddings: Tensor, labels: Tensor, per_anchor: int, margin: float,
                    mode: str = "active", anchors: Tensor | None = None,
                    generator: torch.Generator | None = None) -> Triplets:
    """``per_anchor`` triplets for each anchor (all images by default), drawn as the module
    docstring describes, from the ``(N, D)`` embeddings the loss uses and ``(N,)`` labels
    checked by :func:`as_labels`."""
    if mode not in MODES:
        raise ValueError(f"unknown triplet mode {mode!r}; choose one of {MODES}")
    if per_anchor < 1:
        raise ValueError(f"triplets per anchor must be at least 1, got {per_anchor}")
    generator = generator or torch.Generator().manual_seed(0)
    embeddings = embeddings.detach().cpu().double()
    labels = labels.cpu()
    anchors = torch.arange(len(labels)) if anchors is None else anchors.cpu()
    step = max(1, PAIR_ELEMENTS // len(labels))
    out = []
    for start in range(0, len(anchors), step):
        rows = anchors[start:start + step]
        distances = squared_distances(embeddings[rows], embeddings)
        same = labels[rows, None] == labels[None]
        positives = same.clone()
        positives[torch.arange(len(rows)), rows] = False
        sorted_negatives, order = distances.masked_fill(same, torch.inf).sort(dim=1)
        negative_counts = (~same).sum(1)
        low, high = negative_rank_range(distances, sorted_negatives, negative_counts, margin,
                                        mode)
        fallback = ((high - low).clamp(min=0) * positives).sum(1) == 0
        if fallback.any():
            low_r, high_r = negative_rank_range(distances, sorted_negatives, negative_counts,
                                                margin, "random")
            low, high = low.where(~fallback[:, None], low_r), high.where(~fallback[:, None], high_r)
        pos, neg = _draw(low, high, positives, order, per_anchor, generator)
        out.append((pos, neg, fallback))
    pos, neg, fallback = (torch.cat(parts) for parts in zip(*out, strict=True))
    return Triplets(pos, neg, fallback)
