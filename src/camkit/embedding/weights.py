"""Triplet grad-weights: channel weights of an image in the anchor role, from the gradient of
the triplet loss at the target layer (ALGORITHMS §2.2-§2.3 and §2.5).

Shapes: activations ``A`` ``(B, C, h, w)``; loss gradients ``∂L/∂A`` ``(B, T, C, h, w)``, one
slice per triplet; channel weights ``(B, T, C)`` per triplet or ``(B, C)`` averaged.

The gradients come from the engine's capture helpers: one forward pass in which the graph
starts at the target layer, then ``torch.autograd.grad`` of the losses with respect to the
captured activation only (no parameter gradient, the model borrowed and restored).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import capture
from ..capture.layers import Reshape, to_spatial
from ..methods.gradient import gradcam_plus_plus_alpha, positive_gradient_weights
from ..targets import logits_of
from .triplets import triplet_loss

VARIANTS = ("gradcam", "gradcam++")
GRADIENT_ELEMENTS = 1 << 25  # per-triplet gradient elements held at once (128 MiB float32)


def embedding_of(outputs: object) -> Tensor:
    """The ``(B, D)`` embedding inside whatever the model returned (a tensor, a tuple's first
    element, a dict's only tensor, ``.logits``)."""
    try:
        return logits_of(outputs)
    except (TypeError, ValueError) as err:
        raise type(err)(f"cannot read a (B, D) embedding from the model output: {err}") from err


def gradcam_weights(gradients: Tensor, sign: float = -1.0) -> Tensor:
    """Grad-weights ``β_k(x; t) = (1/Z) Σ_ij sign · ∂L_t/∂A^k_ij`` (ALGORITHMS §2.2; Chen et
    al. 2020's ``α_k`` with the sign of OP-16): ``(..., C, h, w)`` → ``(..., C)``."""
    return sign * gradients.mean(dim=(-2, -1))


def gradcampp_weights(activations: Tensor, gradients: Tensor, sign: float = -1.0) -> Tensor:
    """Grad-CAM++ weights for the score ``S = sign · L_t`` (ALGORITHMS §2.5, OP-21): the
    closed form of §3.3 (Chattopadhay et al. 2018, eq. 19) with ``g = sign · ∂L_t/∂A``:
    ``w_k = Σ_ij α_ij ReLU(g_ij)``, ``α_ij = g² / (2g² + (Σ_ab A^k_ab) g³)``.

    Computed with the engine's Grad-CAM++ functions (:mod:`camkit.methods.gradient`).
    ``(B, C, h, w)`` and ``(B, T, C, h, w)`` → ``(B, T, C)``. The closed form assumes
    ``∂ⁿS/∂Aⁿ = 0`` for ``n ≥ 2``: exact for a piecewise-linear head, an approximation for
    the loss's squared distances (as the spec proposes)."""
    signed = sign * gradients
    return positive_gradient_weights(gradcam_plus_plus_alpha(activations, signed), signed)


def top_m(weights: Tensor, m: int | None) -> tuple[Tensor, Tensor]:
    """The ``M`` channels with the largest signed weight (ALGORITHMS §2.3, OP-19):
    ``(..., C)`` → ``(channels (..., M) int64, weights (..., M))``, largest first.
    ``m=None`` (or ``m ≥ C``) keeps every channel."""
    if m is not None and m < 1:
        raise ValueError(f"top_m must be a positive channel count or None, got {m}")
    count = weights.shape[-1] if m is None else min(m, weights.shape[-1])
    values, channels = weights.topk(count, dim=-1)
    return channels, values


def dense_weights(channels: Tensor, values: Tensor, num_channels: int) -> Tensor:
    """Top-M weights back to all ``C`` channels, zero outside the top-M:
    ``(..., M)`` → ``(..., C)``."""
    dense = values.new_zeros((*values.shape[:-1], num_channels))
    return dense.scatter(-1, channels, values)


def channel_map(activations: Tensor, channels: Tensor, values: Tensor) -> Tensor:
    """``H = Σ_{k ∈ I} β_k A^k`` over the selected channels ``I`` (ALGORITHMS §2.3-§2.4):
    ``(B, C, h, w)``, ``(B, M)``, ``(B, M)`` → raw map ``(B, 1, h, w)``, before ``P(·)``."""
    chosen = activations.gather(1, channels[..., None, None].expand(-1, -1,
                                                                   *activations.shape[-2:]))
    return (chosen * values[..., None, None].to(chosen.dtype)).sum(dim=1, keepdim=True)


@dataclass
class AnchorPass:
    """One forward (and backward) pass of anchors through the model.

    Attributes:
        activations: ``(B, C, h, w)`` float32 target-layer activations of the anchors.
        weights: ``(B, T, C)`` per-triplet weights, or ``(B, 1, C)`` when the weights of the
            mean loss were asked for (equal to the mean of the per-triplet Grad-CAM weights,
            the gradient being linear).
        losses: ``(B, T)`` triplet losses.
        embeddings: ``(B, D)`` anchor embeddings.
    """

    activations: Tensor
    weights: Tensor
    losses: Tensor
    embeddings: Tensor


def triplet_weights(
    model: nn.Module, layer: nn.Module, layer_name: str, inputs: Tensor,
    partners: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]], *, margin: float,
    variant: str = "gradcam", sign: float = -1.0, hinge: bool = True, per_triplet: bool = True,
    reshape: Reshape | None = None,
) -> AnchorPass:
    """Per-triplet channel weights of anchors, from one forward pass of ``inputs``.

    ``partners(embeddings)`` receives the ``(n, D)`` embeddings of ``inputs`` (with their
    graph) and returns ``(anchor (B, D), positive (B, T, D), negative (B, T, D))`` embeddings;
    the first ``B`` rows of ``inputs`` are the anchors. The positives and negatives may be
    later rows of ``inputs`` (images stacked in the same forward) or embeddings computed
    before. The gradient of each triplet's loss is taken at the anchors' activation;
    ``per_triplet=False`` takes one gradient of the mean loss instead (Grad-CAM only).
    Call inside :func:`camkit.capture.borrowed`.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    if variant == "gradcam++" and not per_triplet:
        raise ValueError("Grad-CAM++ weights are not linear in the gradient: per_triplet=True")
    cap = capture.run_forward(model, layer, layer_name, (inputs,), layer_grad=True,
                              input_grad=False)
    anchor, positive, negative = partners(embedding_of(cap.outputs))
    losses = triplet_loss(anchor[:, None], positive, negative, margin, hinge)
    batch = len(anchor)
    activations = to_spatial(cap.activation.detach(), reshape)[:batch].float()
    scores = losses if per_triplet else losses.mean(dim=1, keepdim=True)
    per_chunk = max(1, GRADIENT_ELEMENTS // max(1, activations[0].numel() * batch))
    weights = []
    for start in range(0, scores.shape[1], per_chunk):
        grads = capture.batched_grad(scores[:, start:start + per_chunk], cap.activation)
        grads = to_spatial(grads[:batch].flatten(0, 1), reshape).unflatten(0, (batch, -1))
        grads = grads.float()
        weights.append(gradcam_weights(grads, sign) if variant == "gradcam"
                       else gradcampp_weights(activations, grads, sign))
    return AnchorPass(activations, torch.cat(weights, dim=1), losses.detach().float(),
                      anchor.detach().float())
