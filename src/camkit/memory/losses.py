"""The three training losses of M-CAM as ALGORITHMS §1.3 settles them (OP-8, OP-9).

Shapes: ``B`` images, ``N`` slots, ``c`` channels, ``n_cls`` classes.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from .module import TrainingAddresses


def classifier_loss(scores_vt: Tensor, scores_v: Tensor, labels: Tensor) -> Tensor:
    """``L_classifier = BCE(fc(cat(v_t, q)), y) + BCE(fc(cat(v, q)), y)`` (§1.3).

    ``scores_vt``, ``scores_v``: ``(B, n_cls)`` logits; ``labels``: multi-hot ``(B, n_cls)``.
    Each BCE is ``BCEWithLogits`` averaged over classes and batch ([P])."""
    return (F.binary_cross_entropy_with_logits(scores_vt, labels)
            + F.binary_cross_entropy_with_logits(scores_v, labels))


def sparse_loss(v: Tensor, v_t: Tensor) -> Tensor:
    """``L_sparse = mean_i (v_i − v_{t,i})²`` over the ``c`` components and the batch (§1.3,
    OP-8: the review's ``1/N Σ_{i≤N}`` compares two c-vectors). ``(B, c)``, ``(B, c)`` → ``()``.
    Gradients flow into both ``v`` and ``v_t`` (§1.3 [P])."""
    return F.mse_loss(v, v_t)


def kl_divergence(target_logits: Tensor, logits: Tensor) -> Tensor:
    """``KL(P ‖ Q) = Σ_n P_n log(P_n / Q_n)``, averaged over the batch (§1.3, OP-8: the
    review's expansion has the ratio inverted), with ``P = softmax(target_logits)`` and
    ``Q = softmax(logits)``: ``(B, N)``, ``(B, N)`` → ``()``. Works on logits so that a small
    address temperature cannot underflow ``log Q``."""
    return F.kl_div(logits.log_softmax(dim=1), target_logits.log_softmax(dim=1),
                    reduction="batchmean", log_target=True)


def address_loss(value_logits: Tensor, spatial_logits: Tensor, key_logits: Tensor) -> Tensor:
    """``L_address = KL(p' ‖ p_s) + KL(p' ‖ p)`` (§1.3) with the value address p' detached as
    the target (OP-9), so the loss moves S and K towards V's addressing, never the reverse.
    Address logits ``(B, N)`` each → ``()``."""
    target = value_logits.detach()
    return kl_divergence(target, spatial_logits) + kl_divergence(target, key_logits)


def loss_terms(out: TrainingAddresses, labels: Tensor) -> dict[str, Tensor]:
    """Every term and the total ``L = L_classifier + L_sparse + L_address`` (unit weights,
    §1.3) for one batch; ``labels`` multi-hot ``(B, n_cls)``."""
    terms = {
        "classifier": classifier_loss(out.scores_vt, out.scores_v, labels),
        "sparse": sparse_loss(out.v, out.v_t),
        "address": address_loss(out.value_logits, out.spatial_logits, out.key_logits),
    }
    terms["total"] = terms["classifier"] + terms["sparse"] + terms["address"]
    return terms
