"""Ablation-CAM (Desai & Ramaswamy, WACV 2020; ALGORITHMS §3.7).

Channel ``k`` is weighted by the relative drop of the target score when it is set to 0,
``w_k = (s − s_k) / s``. Each ablation needs one evaluation of the network after the target
layer only: when :mod:`camkit.split` can cut the model there, only that part is re-run
(``notes["ablationcam"]["path"] == "split"``, with ``"cut"`` naming the enclosing module where
the model was cut when that is not the layer itself); otherwise full forward passes with the
layer's output replaced (``"full-forward"``, with the reason). Channels that are already all
zero are not evaluated: ablating them changes nothing, so ``s_k = s`` exactly.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ..capture import LayerPass
from ..capture import split as splitting
from ..capture.batches import (
    BATCH_OPTIONS,
    DEFAULT_MAX_BATCH_MEMORY,
    Batching,
    Scorer,
    forward_bytes,
    run_items,
)
from .gradient import weighted_sum
from .registry import Method, register

# Memory of one tail evaluation per image, as a multiple of the layer output's bytes (the
# ablated copy plus the tail's intermediate tensors).
TAIL_MEMORY_FACTOR = 4


def ablation_weights(scores: Tensor, ablated: Tensor) -> Tensor:
    """``w^c_k = (s_c − s_c^{(k)}) / s_c`` (Desai & Ramaswamy 2020, §3): ``scores`` ``(B, K)``,
    ``ablated`` ``(B, K, C)`` scores with channel ``k`` set to 0 → ``(B, K, C)``."""
    return (scores[..., None] - ablated) / scores[..., None]


def ablationcam(activations: Tensor, scores: Tensor, ablated: Tensor) -> Tensor:
    """Ablation-CAM map ``Σ_k w^c_k A^k``: ``(B, C, h, w)`` → ``(B, K, h, w)``."""
    return weighted_sum(ablation_weights(scores, ablated), activations)


def _warn_nonpositive(scores: Tensor) -> None:
    count = int((scores <= 0).sum())
    if count:
        warnings.warn(
            f"Ablation-CAM divides by the target score, which is <= 0 for {count} of "
            f"{scores.numel()} targets: their channel weights change sign (ALGORITHMS §3.7); "
            "explain classes with positive scores",
            RuntimeWarning, stacklevel=4,
        )


def _rescorer(layer_pass: LayerPass, split: bool) -> tuple[Scorer, int, dict[str, str]]:
    """The ablated-activation scorer, the memory of one evaluation, and which path it takes."""
    acts = layer_pass.activations
    reason = "split=False"
    if split and layer_pass.score_outputs is None:
        reason = "the engine gave no function to score model outputs"
    elif split:
        try:
            tail, cut = splitting.checked_tail(
                layer_pass.model, layer_pass.layer, layer_pass.inputs, acts,
                layer_pass.scores, layer_pass.output_scorer, layer_pass.rescore_activations,
            )
            path = {"path": "split"} | ({"cut": cut} if cut else {})
            return tail, acts[0].numel() * 4 * TAIL_MEMORY_FACTOR, path
        except splitting.SplitError as error:
            reason = str(error)
    item_bytes = forward_bytes(layer_pass.inputs) + acts[0].numel() * 4
    return layer_pass.rescore_activations, item_bytes, {"path": "full-forward", "reason": reason}


def _ablationcam(layer_pass: LayerPass, split: bool = True, batch_size: int | None = None,
                 max_batch_memory: float = DEFAULT_MAX_BATCH_MEMORY,
                 progress: bool | None = None) -> Tensor:
    if not isinstance(split, bool):
        raise TypeError(f"split must be True or False, got {split!r}")
    batching = Batching(batch_size, max_batch_memory, progress)
    acts, scores = layer_pass.activations, layer_pass.scores
    _warn_nonpositive(scores)
    rescore, item_bytes, path = _rescorer(layer_pass, split)
    pairs = acts.flatten(2).ne(0).any(dim=2).nonzero()  # (n, 2): image, non-zero channel

    def evaluate(items: Tensor) -> Tensor:
        image, channel = pairs[items].unbind(dim=1)
        ablated = acts[image]  # a copy: advanced indexing
        ablated[torch.arange(len(items), device=acts.device), channel] = 0
        return rescore(ablated, image)

    size = batching.size_for(item_bytes)
    results = run_items(len(pairs), evaluate, size, device=acts.device, desc="ablationcam",
                        progress=batching.progress)
    ablated = scores[:, :, None].repeat(1, 1, acts.shape[1])
    if len(pairs):
        ablated[pairs[:, 0], :, pairs[:, 1]] = results
    layer_pass.notes["ablationcam"] = {**path, "evaluations": len(pairs), "batch_size": size,
                                       "ablated_scores": ablated}
    return ablationcam(acts, scores, ablated)


register(Method(
    "ablationcam", "channels weighted by the score's relative drop when each is set to 0",
    "Desai & Ramaswamy, Ablation-CAM, WACV 2020", _ablationcam,
    options=("split", *BATCH_OPTIONS), maths=(ablation_weights, ablationcam),
))
