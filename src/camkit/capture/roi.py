"""Per-box gradients of a two-stage detector through its pooled RoI rows.

A detection's score depends on the backbone through one row of the box branch (one proposal's
pooled features, :class:`~camkit.detection.RoIBoxHead`). The plain batched backward of K box
scores runs the box head (a 12544 → 1024 layer over about a thousand proposals for
torchvision's ResNet50-FPN) K times. Here:

1. one batched backward from the scores to the box branch's outputs (through the cheap
   post-processing only) says which rows each score reads: the rows where its gradient is
   not zero;
2. the pooler and the box head are run again on those rows only (from the pyramid levels
   detached), and one backward through them per group of scores that read disjoint rows
   gives every score's gradient at its own rows (rows are independent in eval mode, so the
   summed backward separates exactly);
3. per score, its own rows pooled again and one backward from them to the pyramid levels
   (RoI align's backward costs per row), then from the levels that received a gradient (a
   row is pooled from one level) through the feature pyramid to the target layers.

The gradients are those of the plain batched backward; only which parts run, and how often,
differ. Models the box branch is not recognised in take :func:`camkit.capture.batched_grads`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..detection import RoIBoxHead, proposal_rows, roi_box_head


@dataclass
class RoIRecord:
    """The box branch's pooler inputs and predictor outputs in one forward pass."""

    head: RoIBoxHead
    pool_inputs: list[tuple[Any, ...]] = field(default_factory=list)
    outputs: list[tuple[Tensor, ...]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)  # set by roi_gradients

    def usable(self) -> bool:
        """Called once each, with proposals that carry no gradient."""
        if len(self.pool_inputs) != 1 or len(self.outputs) != 1:
            return False
        proposals = self.pool_inputs[0][1]
        return all(isinstance(p, Tensor) and not p.requires_grad for p in proposals)


@contextlib.contextmanager
def recording_roi(model: nn.Module, layers: list[nn.Module], targets: Any
                  ) -> Iterator[RoIRecord | None]:
    """Record the box branch of a recognised two-stage detector during the block
    (:func:`camkit.detection.roi_box_head`); yields ``None`` for every other model."""
    head = roi_box_head(model, layers, targets)
    if head is None or any(m.training for part in (head.pool, head.head, head.predictor)
                           for m in part.modules()):
        yield None
        return
    record = RoIRecord(head)

    def keep_inputs(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        names = ("x", "boxes", "image_shapes")
        record.pool_inputs.append((*args, *(kwargs[n] for n in names[len(args):])))

    def keep_outputs(_module: nn.Module, _args: Any, output: Any) -> None:
        record.outputs.append(tuple(output))

    handles = [head.pool.register_forward_pre_hook(keep_inputs, with_kwargs=True),
               head.predictor.register_forward_hook(keep_outputs)]
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()


def output_gradients(scores: Tensor, outputs: tuple[Tensor, ...]) -> list[Tensor]:
    """``(K, *output.shape)`` gradients of each column's sum of ``scores`` ``(B, K)`` with
    respect to each of ``outputs`` (zeros for one the scores do not use), one batched
    backward."""
    k = scores.shape[1]
    one_hot = torch.eye(k, dtype=scores.dtype, device=scores.device)
    grads = torch.autograd.grad(
        scores, outputs, grad_outputs=one_hot[:, None, :].expand(k, scores.shape[0], k),
        retain_graph=True, is_grads_batched=True, allow_unused=True)
    return [torch.zeros(k, *o.shape, dtype=o.dtype, device=o.device) if g is None else g
            for g, o in zip(grads, outputs, strict=True)]


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


def roi_gradients(scores: Tensor, wrt: tuple[Tensor, ...], record: RoIRecord
                  ) -> tuple[Tensor, ...]:
    """The gradients of every column of ``scores`` ``(B, K)`` with respect to each of ``wrt``
    ``(B, ...)``, as ``(B, K, ...)``: those of :func:`camkit.capture.batched_grads`, taken
    through the box branch's rows (see the module's docstring). ``record.summary`` then says
    how many rows were pooled again and how many backward passes the box head took."""
    at_outputs = output_gradients(scores, record.outputs[0])
    reads = torch.stack([g.flatten(2).ne(0).any(-1) for g in at_outputs]).any(0)  # (K, P)
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
                outputs, pooled, [g[members][:, selected].sum(0) for g in at_outputs],
                retain_graph=True)
            for k in members:  # RoI align's backward costs per row: pool k's own rows again
                at_levels = torch.autograd.grad(pool(selected[reads[k]]), list(levels.values()),
                                                at_rows[reads[k]], allow_unused=True)
                for grad, g in zip(grads, _level_backward(features, at_levels, wrt),
                                   strict=True):
                    grad[k] = g
    record.summary = {"path": "roi-rows", "rows": len(selected),
                      "box_head_backwards": len(groups)}
    return tuple(g.transpose(0, 1) for g in grads)


def _level_backward(features: dict[str, Tensor], at_levels: tuple[Tensor | None, ...],
                    wrt: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The gradients at ``wrt`` of the pyramid levels' gradients ``at_levels``, through the
    levels that received one only (a box is pooled from one level: the others' 3×3 convs are
    skipped)."""
    used = [(level, g) for level, g in zip(features.values(), at_levels, strict=True)
            if g is not None and bool(g.any())]
    if not used:
        return tuple(torch.zeros_like(w) for w in wrt)
    return torch.autograd.grad([level for level, _ in used], wrt, [g for _, g in used],
                               retain_graph=True)
