"""Direct explanations of an embedding network, with backpropagation.

- :func:`triplet_gradcam`: the map of an anchor image from the gradient of the triplet loss
  with given positive and negative images (ALGORITHMS §2.2-§2.3, §2.5): one forward pass of
  the anchors, positives and negatives stacked, one backward to the layer.
- :func:`explain_similarity`: "why are these two images similar?", in both directions, with
  any gradient method, through the :class:`camkit.targets.Similarity` target.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import capture
from ..api import as_inputs, explain, resolve_layer
from ..capture.layers import LayerSpec, Reshape
from ..explanation import Explanation
from ..postprocess import postprocess
from ..targets import Similarity
from .weights import VARIANTS, channel_map, dense_weights, embedding_of, triplet_weights
from .weights import top_m as keep_top_m


def _partner_images(images: Tensor, anchors: Tensor, role: str) -> Tensor:
    """Positives or negatives as ``(B, T, C, H, W)``: ``(B, C, H, W)`` is one per anchor."""
    if images.dim() == anchors.dim():
        images = images.unsqueeze(1)
    if images.dim() != anchors.dim() + 1 or images.shape[0] != anchors.shape[0] \
            or images.shape[2:] != anchors.shape[1:]:
        raise ValueError(
            f"{role} must be (B, C, H, W) (one per anchor) or (B, T, C, H, W) (T per anchor) "
            f"with the anchors' B = {anchors.shape[0]} and image shape "
            f"{tuple(anchors.shape[1:])}; got {tuple(images.shape)}")
    return images


def triplet_gradcam(
    model: nn.Module,
    layer: LayerSpec,
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    *,
    margin: float = 0.2,
    variant: str = "gradcam",
    top_m: int | None = None,
    sign: float = -1.0,
    hinge: bool = True,
    reshape: Reshape | None = None,
    eval_mode: bool = True,
) -> Explanation:
    """Explain ``anchor`` images by the triplet loss with their positives and negatives.

    Args:
        model: the embedding network (output: ``(B, D)`` embeddings).
        layer: target layer (module, dotted name, ``None`` = last spatial layer).
        anchor: ``(B, C, H, W)`` or ``(C, H, W)``.
        positive, negative: ``(B, C, H, W)`` (one triplet per anchor) or ``(B, T, C, H, W)``
            (``T`` triplets per anchor, whose weights are averaged, §2.3).
        margin: the triplet margin.
        variant: ``"gradcam"`` or ``"gradcam++"`` (§2.5).
        top_m: keep the ``M`` channels with the largest weight (``None``: all).
        sign: ``-1`` weights by ``−∂L/∂A`` (OP-16).
        hinge: keep ``[·]_+`` (an inactive triplet then gives a zero map, with a warning).
        reshape: maps the layer output to ``(B, C, h, w)`` when it cannot be inferred.
        eval_mode: run the model in eval mode (its flags are restored).

    Returns:
        An :class:`~camkit.Explanation` with one method, ``"triplet-gradcam"`` or
        ``"triplet-gradcam++"``: maps ``(B, 1, H, W)``; ``scores`` = minus the mean loss;
        ``outputs`` the anchor embeddings; ``details`` holds ``weights`` ``(B, C)`` (zero
        outside the top-M) and ``losses`` ``(B, T)``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    (anchors,) = as_inputs(anchor)
    positives = _partner_images(positive.to(anchors.device), anchors, "positive")
    negatives = _partner_images(negative.to(anchors.device), anchors, "negative")
    batch, per_anchor = positives.shape[:2]
    if negatives.shape[1] != per_anchor:
        raise ValueError(f"got {per_anchor} positives but {negatives.shape[1]} negatives per "
                         "anchor; give one negative per positive")
    layer_name, module = resolve_layer(model, layer, (anchors,))
    stacked = torch.cat([anchors, positives.flatten(0, 1), negatives.flatten(0, 1)])

    def partners(e: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        rest = e[batch:].unflatten(0, (2, batch, per_anchor))
        return e[:batch], rest[0], rest[1]

    with capture.borrowed(model, eval_mode):
        result = triplet_weights(model, module, layer_name, stacked, partners, margin=margin,
                                 variant=variant, sign=sign, hinge=hinge,
                                 per_triplet=variant == "gradcam++", reshape=reshape)
    channels, values = keep_top_m(result.weights.mean(dim=1), top_m)
    raw = channel_map(result.activations, channels, values)
    maps, constant = postprocess(raw, (anchors.shape[-2], anchors.shape[-1]))
    inactive = int((result.losses <= 0).all(dim=1).sum()) if hinge else 0
    if inactive:
        warnings.warn(f"{inactive} of {batch} anchors have only inactive triplets (loss 0 under "
                      "the hinge), so zero weights and blank maps; pick harder triplets or pass "
                      "hinge=False", RuntimeWarning, stacklevel=2)
    name = "triplet-" + variant
    details = {"weights": dense_weights(channels, values, result.activations.shape[1]),
               "losses": result.losses}
    return Explanation({name: maps}, {name: raw}, {name: constant}, None,
                       -result.losses.mean(dim=1, keepdim=True), result.embeddings, layer_name,
                       details)


def explain_similarity(
    model: nn.Module,
    first: Tensor,
    second: Tensor,
    methods: str | Sequence[str] = ("gradcam",),
    layer: LayerSpec = None,
    **options: Any,
) -> Explanation:
    """Why are ``first[i]`` and ``second[i]`` similar? Both directions in one call.

    The target of each image is the cosine similarity of its embedding to its partner's
    (:class:`camkit.targets.Similarity`), so any method of ``camkit.explain`` applies. One
    forward pass without autograd gives the partners' embeddings, then ``camkit.explain``
    runs on the ``2B`` images. Returns its :class:`~camkit.Explanation`: rows ``0..B-1``
    explain ``first`` (similarity to ``second``), rows ``B..2B-1`` explain ``second``
    (similarity to ``first``). ``options`` go to ``camkit.explain``.
    """
    (a,), (b,) = as_inputs(first), as_inputs(second)
    if a.shape != b.shape:
        raise ValueError(f"first {tuple(a.shape)} and second {tuple(b.shape)} must have the "
                         "same shape (one partner per image)")
    both = torch.cat([a, b])
    with capture.borrowed(model, options.get("eval_mode", True)), torch.no_grad():
        embeddings = embedding_of(model(both))
    references = torch.cat([embeddings[len(a):], embeddings[:len(a)]])
    return explain(model, both, Similarity(references), methods, layer, **options)
