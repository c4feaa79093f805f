"""Per-box gradients of torchvision detectors, taken where each box's score reads the features.

The plain batched backward of K box scores (:func:`camkit.capture.batched_grads`) runs the
whole detector head K times: for Faster R-CNN the box head (a 12544 → 1024 layer over about a
thousand proposals), for RetinaNet and FCOS the convolution towers over every pyramid level.
Yet a detection's score reads one proposal's row of a two-stage detector's box branch, or one
pyramid level's output of a one-stage detector's head. Both paths below start with one batched
backward from the scores to those outputs, through the cheap post-processing only, which says
what each score reads: where its gradient is not zero.

Two-stage (:class:`RoIRecord`, :class:`~camkit.detection.RoIBoxHead`):

1. the pooler and the box head are run again on the rows the scores read only (from the
   pyramid levels detached), and one backward through them per group of scores that read
   disjoint rows gives every score's gradient at its own rows (rows are independent in eval
   mode, so the summed backward separates exactly);
2. per score, its own rows pooled again and one backward from them to the pyramid levels
   (RoI align's backward costs per row), then from the levels that received a gradient (a
   row is pooled from one level) through the feature pyramid to the target layers.

One-stage (:class:`DenseRecord`, :func:`~camkit.detection.dense_score_modules`): per score,
one backward from the head outputs it reads (one level's) to the target layers.

The gradients are those of the plain batched backward; only which parts run, and how often,
differ. Other models take :func:`camkit.capture.batched_grads`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..detection import RoIBoxHead, dense_score_modules, proposal_rows, roi_box_head


@dataclass
class RoIRecord:
    """A two-stage detector's pooler inputs and box predictor outputs in one forward pass."""

    head: RoIBoxHead
    pool_inputs: list[tuple[Any, ...]] = field(default_factory=list)
    outputs: list[tuple[Tensor, ...]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)  # set by detector_gradients

    def usable(self) -> bool:
        """Called once each, with proposals that carry no gradient."""
        if len(self.pool_inputs) != 1 or len(self.outputs) != 1:
            return False
        proposals = self.pool_inputs[0][1]
        return all(isinstance(p, Tensor) and not p.requires_grad for p in proposals)


@dataclass
class DenseRecord:
    """The outputs of a one-stage detector's score-reading modules in one forward pass, every
    call (one per pyramid level) in call order."""

    outputs: list[Tensor] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)  # set by detector_gradients

    def usable(self) -> bool:
        return bool(self.outputs)


DetectorRecord = RoIRecord | DenseRecord


@contextlib.contextmanager
def recording_detector(model: nn.Module, layers: list[nn.Module], targets: Any
                       ) -> Iterator[DetectorRecord | None]:
    """Record where the scores of a recognised torchvision detector read the features during
    the block (:func:`camkit.detection.roi_box_head`,
    :func:`camkit.detection.dense_score_modules`); yields ``None`` for every other model."""
    head = roi_box_head(model, layers, targets)
    dense = None if head is not None else dense_score_modules(model, layers)
    parts = (head.pool, head.head, head.predictor) if head else dense or ()
    if not parts or any(m.training for part in parts for m in part.modules()):
        yield None
        return
    record: DetectorRecord = RoIRecord(head) if head else DenseRecord()

    def keep_inputs(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        names = ("x", "boxes", "image_shapes")
        cast(RoIRecord, record).pool_inputs.append(
            (*args, *(kwargs[n] for n in names[len(args):])))

    def keep_outputs(_module: nn.Module, _args: Any, output: Any) -> None:
        if isinstance(record, RoIRecord):
            record.outputs.append(tuple(output))
        else:
            record.outputs.append(output)

    handles = ([head.pool.register_forward_pre_hook(keep_inputs, with_kwargs=True),
                head.predictor.register_forward_hook(keep_outputs)] if head
               else [m.register_forward_hook(keep_outputs) for m in parts])
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()


def output_gradients(scores: Tensor, outputs: tuple[Tensor, ...]) -> tuple[Tensor | None, ...]:
    """``(K, *output.shape)`` gradients of each column's sum of ``scores`` ``(B, K)`` with
    respect to each of ``outputs`` (``None`` for one the scores do not use, such as the box
    regression without ``add_iou``), one batched backward."""
    k = scores.shape[1]
    one_hot = torch.eye(k, dtype=scores.dtype, device=scores.device)
    return torch.autograd.grad(
        scores, outputs, grad_outputs=one_hot[:, None, :].expand(k, scores.shape[0], k),
        retain_graph=True, is_grads_batched=True, allow_unused=True)


def disjoint_groups(rows: Tensor) -> list[list[int]]:
    """Greedy groups of the scores ``k`` whose row sets ``rows[k]`` ``(K, n)`` bool are
    pairwise disjoint; scores that read no row are left out."""
    groups: list[list[int]] = []
    taken: list[Tensor] = []
    for k in range(rows.shape[0]):
        if not bool(rows[k].any()):
            continue
        for members, used in zip(groups, taken, strict=True):
            if not bool((used & rows[k]).any()):
                members.append(k)
                used |= rows[k]
                break
        else:
            groups.append([k])
            taken.append(rows[k].clone())
    return groups


def detector_gradients(scores: Tensor, wrt: tuple[Tensor, ...], record: DetectorRecord
                       ) -> tuple[Tensor, ...]:
    """The gradients of every column of ``scores`` ``(B, K)`` with respect to each of ``wrt``
    ``(B, ...)``, as ``(B, K, ...)``: those of :func:`camkit.capture.batched_grads`, taken
    where the scores read the features (see the module's docstring). ``record.summary`` then
    says what ran."""
    if isinstance(record, RoIRecord):
        return _roi_gradients(scores, wrt, record)
    at_outputs = output_gradients(scores, tuple(record.outputs))
    grads = [w.new_zeros(scores.shape[1], *w.shape) for w in wrt]
    read = 0
    for k in range(scores.shape[1]):
        per_output = tuple(None if g is None else g[k] for g in at_outputs)
        read += sum(g is not None and bool(g.any()) for g in per_output)
        for grad, g in zip(grads, _backward_from_read(record.outputs, per_output, wrt),
                           strict=True):
            grad[k] = g
    record.summary = {"path": "head-levels", "outputs": len(record.outputs),
                      "outputs_read": read}
    return tuple(g.transpose(0, 1) for g in grads)


def _roi_gradients(scores: Tensor, wrt: tuple[Tensor, ...], record: RoIRecord
                   ) -> tuple[Tensor, ...]:
    """:func:`detector_gradients` through a two-stage detector's box branch."""
    used = [(i, g) for i, g in enumerate(output_gradients(scores, record.outputs[0]))
            if g is not None]  # (K, P, n) each: the class logits, the box regression
    reads = torch.zeros(scores.shape[1], len(record.outputs[0][0]), dtype=torch.bool,
                        device=scores.device)  # (K, P)
    for _, g in used:
        reads |= g.flatten(2).ne(0).any(-1)
    selected = reads.any(0).nonzero()[:, 0]
    grads = [w.new_zeros(scores.shape[1], *w.shape) for w in wrt]
    groups: list[list[int]] = []
    if len(selected):
        head, (features, proposals, image_shapes) = record.head, record.pool_inputs[0]
        levels = {name: f.detach().requires_grad_(True) for name, f in features.items()}

        def pool(rows: Tensor) -> Tensor:
            with torch.enable_grad():
                return head.pool(levels, proposal_rows(proposals, rows), image_shapes)

        pooled = pool(selected)
        with torch.enable_grad():
            outputs = tuple(head.predictor(head.head(pooled)))
        reads = reads[:, selected]
        groups = disjoint_groups(reads)
        for members in groups:
            (at_rows,) = torch.autograd.grad(
                [outputs[i] for i, _ in used], pooled,
                [g[members][:, selected].sum(0) for _, g in used], retain_graph=True)
            for k in members:  # RoI align's backward costs per row: pool k's own rows again
                at_levels = torch.autograd.grad(pool(selected[reads[k]]), list(levels.values()),
                                                at_rows[reads[k]], allow_unused=True)
                for grad, g in zip(grads, _backward_from_read(list(features.values()),
                                                              at_levels, wrt), strict=True):
                    grad[k] = g
    record.summary = {"path": "roi-rows", "rows": len(selected),
                      "box_head_backwards": len(groups)}
    return tuple(g.transpose(0, 1) for g in grads)


def _backward_from_read(tensors: list[Tensor], grads: tuple[Tensor | None, ...],
                        wrt: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The gradients at ``wrt`` of ``grads`` at ``tensors`` (``None`` or zeros where a score
    reads nothing), back-propagated from the tensors it reads only: a box's pyramid level or
    head outputs, the other levels' convolutions skipped (zeros at a layer those do not
    reach, such as a fine level's for a box of a coarser one)."""
    read = [(t, g) for t, g in zip(tensors, grads, strict=True)
            if g is not None and bool(g.any())]
    if not read:
        return tuple(torch.zeros_like(w) for w in wrt)
    return torch.autograd.grad([t for t, _ in read], wrt, [g for _, g in read],
                               retain_graph=True, allow_unused=True, materialize_grads=True)
