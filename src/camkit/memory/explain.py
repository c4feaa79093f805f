"""The M-CAM map: slot search by key perturbation (paper Algorithm 1), then exp(τ) channel
weights from the found slot of the spatial dictionary (ALGORITHMS §1.4-§1.6).

Shapes: ``B`` images, ``K`` target classes per image, ``N`` slots, ``c`` channels, ``(h, w)``
the layer's spatial size.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from .module import COS_EPS, BiasReducingMemory


class SlotSearch(NamedTuple):
    """The result of :func:`slot_search`: ``slots`` ``(B, K)`` 0-based slot indices
    (``argmax_i drop_i``), ``found`` ``(B, K)`` whether that slot lowers the target score at
    all (OP-6), ``drops`` ``(B, K, N)`` the score drop ``z_ĉ − z'_ĉ`` of every slot."""

    slots: Tensor
    found: Tensor
    drops: Tensor


class SlotNoise(NamedTuple):
    """The noise of Algorithm 1 in the form the algorithm uses it (§1.4, OP-5).

    Algorithm 1 replaces key slot ``n`` by ``w ~ N(0, I_c)`` and uses ``w`` only through
    ``cos(q, w)``. Write ``w = z q̂ + w⊥`` with ``q̂ = q / ‖q‖``: then ``z ~ N(0, 1)`` and
    ``r² = ‖w⊥‖² ~ χ²_{c−1}`` are independent, and ``cos(q, w) = z ‖q‖ / (‖q‖ √(z² + r²) + ε)``
    exactly. So the pair ``(z, r²)`` per (image, slot) is the whole noise, drawn in
    ``O(B·N)`` instead of ``O(B·N·c)``; the vector ``w = z q̂ + r e`` with any unit
    ``e ⊥ q̂`` reproduces it in a literal loop.

    ``along``: ``z``, ``rest``: ``r²``, both ``(N,)``: entry ``n`` is the noise that replaces
    key slot ``n``, for every image and target of the call. Drawing once per slot, not once per
    image and slot, keeps an image's map independent of the batch it is explained in, and gives
    Sensitivity's perturbed copies of an image the noise of the image itself (§4.4, pitfall 6):
    noise drawn per row would change with the row an image lands on."""

    along: Tensor
    rest: Tensor


def draw_slot_noise(memory: BiasReducingMemory, generator: torch.Generator | None) -> SlotNoise:
    """Draw :class:`SlotNoise`, on the generator's device, in this order: ``along =
    torch.randn((N,), generator=generator)``, then ``rest = 2 ·
    torch._standard_gamma(full((N,), (c − 1) / 2), generator=generator)`` (χ²_{c−1} as
    2·Gamma((c−1)/2, 1))."""
    device = generator.device if generator is not None else memory.keys.device
    shape = (memory.num_slots,)
    along = torch.randn(shape, generator=generator, device=device)
    shape_param = torch.full(shape, (memory.channels - 1) / 2, device=device)
    return SlotNoise(along, 2 * torch._standard_gamma(shape_param, generator=generator))


def _noise_logits(queries: Tensor, noise: SlotNoise, temperature: float) -> Tensor:
    """``cos(q_b, w_n) / T`` of each noise slot (see :class:`SlotNoise`): ``(B, c)`` →
    ``(B, N)``."""
    along, rest = noise.along.to(queries), noise.rest.to(queries)
    q_norm = queries.norm(dim=1, keepdim=True)
    return along * q_norm / (q_norm * (along.square() + rest).sqrt() + COS_EPS) / temperature


def slot_search(
    memory: BiasReducingMemory, queries: Tensor, target_indices: Tensor, noise: SlotNoise
) -> SlotSearch:
    """Algorithm 1 for all ``B`` images, ``K`` targets and ``N`` slots at once (§1.4).

    For image ``b`` and slot ``i``, key slot ``i`` is replaced by noise ``i`` and the
    memory head re-scores: ``z'_i = fc(cat(p_i V, q))`` with ``p_i`` the address under the
    perturbed keys. The drop is ``z_ĉ − z'_{i,ĉ}`` with ``z`` the unperturbed head (§1.4 [P]).

    Exact closed form (equal to §1.4's ``N × N`` softmax, up to rounding): the perturbed
    softmax differs from the unperturbed one in one logit, so with ``a_n = exp(ℓ_n)``,
    ``a'_i = exp(ℓ'_i)`` (ℓ the key logits, ℓ' the noise logits, both shifted by their max),
    ``Z = Σ_n a_n`` and ``u_n = W_v[ĉ]·V_n`` (the value half of fc's row for ĉ), the ``q`` half
    of fc and its bias cancel in the drop and

        drop_i = (Σ_n a_n u_n) / Z − (Σ_n a_n u_n + (a'_i − a_i) u_i) / (Z − a_i + a'_i).

    Cost ``O(B·N·c·K)`` (for ``u``) instead of ``O(B·N²·c)`` for the ``N × N`` addresses
    and reads plus ``O(B·N·c·n_cls)`` for re-scoring every class.

    Args:
        queries: ``(B, c)`` pooled features ``q``.
        target_indices: ``(B, K)`` long class indices ``ĉ``.
        noise: from :func:`draw_slot_noise`.
    """
    temperature = memory.addr_temperature
    key_logits = memory.key_address_logits(queries)  # (B, N)
    swapped = _noise_logits(queries, noise, temperature)  # (B, N)
    shift = torch.maximum(key_logits.amax(1), swapped.amax(1))[:, None]
    a, a_new = (key_logits - shift).exp(), (swapped - shift).exp()
    value_weight = memory.fc.weight[target_indices, : memory.channels]  # W_v[ĉ] (B, K, c)
    u = value_weight @ memory.values.T  # u_n = W_v[ĉ]·V_n, (B, K, N)
    total = (a[:, None, :] * u).sum(dim=2, keepdim=True)  # (B, K, 1)
    norm = a.sum(dim=1, keepdim=True)  # (B, 1)
    perturbed = (total + (a_new - a)[:, None, :] * u) / (norm - a + a_new)[:, None, :]
    drops = total / norm[:, None, :] - perturbed
    best, slots = drops.max(dim=2)
    return SlotSearch(slots, best > 0, drops)


def channel_similarity(features: Tensor, slot_maps: Tensor) -> Tensor:
    """``τ_i = cos(vec f_{x,i}, vec S_{n_ĉ,i})`` over the ``h·w`` positions of each channel
    (§1.5, OP-3); ``τ_i = 0`` where either channel is all zeros (§1.5 [P]).

    ``features`` ``(B, c, h, w)``, ``slot_maps`` ``(B, K, c, h, w)`` → ``(B, K, c)`` in [−1, 1].
    """
    f = features.flatten(2)  # (B, c, hw)
    s = slot_maps.flatten(3)  # (B, K, c, hw)
    norms = f.norm(dim=2)[:, None, :] * s.norm(dim=3)  # (B, K, c)
    dots = torch.einsum("bcx,bkcx->bkc", f, s)
    tau = dots / (norms + COS_EPS)
    return torch.where(norms > 0, tau, torch.zeros_like(tau)).clamp(-1.0, 1.0)


def channel_weights(tau: Tensor, sharpness: float = 1.0, base: Tensor | None = None) -> Tensor:
    """``w_i = α_i · exp(s · τ_i)`` (§1.5, OP-4). The seed's weights are the default
    ``s = 1``, no base (``α_i = 1``): ``w_i = exp(τ_i) ∈ [e⁻¹, e]``.

    ``sharpness`` ``s`` widens the range to ``[e⁻ˢ, eˢ]``, so channels whose spatial pattern
    matches the slot's dominate (``s = 10`` is ``exp(τ / 0.1)``); ``base`` ``α`` of the same
    shape as ``tau`` makes the weights depend on the class through the memory (the ``base``
    option of :func:`mcam_raw_maps`). Same shape as ``tau``."""
    weights = (sharpness * tau).exp()
    return weights if base is None else base * weights


BASES = ("none", "slot", "classifier", "value", "address", "gradcam")


def slot_profile(slot_maps: Tensor) -> Tensor:
    """``α_i = mean_{h,w} S_{n_ĉ,i}``: how much the found slot uses channel ``i``, the
    ``"slot"`` base of :func:`channel_weights` (camkit's variant: it needs nothing but the
    memory). ``(B, K, c, h, w)`` → ``(B, K, c)``."""
    return slot_maps.mean(dim=(3, 4))


def classifier_weights(memory: BiasReducingMemory, target_indices: Tensor) -> Tensor:
    """``α_i = W_q[ĉ, i]``, the weight of query channel ``i`` in the memory's classifier
    ``fc(cat(v, q))`` for class ``ĉ`` (a CAM weight of the memory head; the ``"classifier"``
    base). ``(B, K)`` → ``(B, K, c)``."""
    return memory.fc.weight[target_indices, memory.channels:]


def key_gradient(memory: BiasReducingMemory, queries: Tensor, coefficients: Tensor) -> Tensor:
    """``Σ_n c_n ∂ℓ_n/∂q``, a combination of the gradients of the key logits
    ``ℓ_n = cos(q, K_n) / T`` (§1.2) with respect to the query::

        ∂ℓ_n/∂q = (K_n / D_n − (q·K_n) ‖K_n‖ q / (‖q‖ D_n²)) / T,   D_n = ‖q‖ ‖K_n‖ + ε.

    ``queries`` ``(B, c)``, ``coefficients`` ``(B, K, N)`` → ``(B, K, c)``."""
    keys, temperature = memory.keys, memory.addr_temperature
    q_norm = queries.norm(dim=1, keepdim=True)  # (B, 1)
    k_norm = keys.norm(dim=1)  # (N,)
    denominator = q_norm * k_norm + COS_EPS  # D, (B, N)
    dots = queries @ keys.T  # (B, N)
    along_key = 1 / (temperature * denominator)
    along_query = dots * k_norm / (temperature * q_norm.clamp_min(COS_EPS) * denominator ** 2)
    return ((coefficients * along_key[:, None, :]) @ keys
            - (coefficients * along_query[:, None, :]).sum(dim=2, keepdim=True)
            * queries[:, None, :])


def value_gradient(memory: BiasReducingMemory, queries: Tensor, target_indices: Tensor
                   ) -> Tensor:
    """``α = ∂(W_v[ĉ]·v)/∂q``: the gradient, with respect to the query, of the value half of
    the memory classifier ``z_ĉ = W_v[ĉ]·v + W_q[ĉ]·q + b`` with ``v = p V`` and
    ``p = softmax(ℓ)`` (§1.1-§1.2; the ``"value"`` base).

    With ``u_n = W_v[ĉ]·V_n`` (what slot ``n`` adds to class ĉ) and ``ū = Σ_n p_n u_n``,
    ``α = Σ_n p_n (u_n − ū) ∂ℓ_n/∂q`` (:func:`key_gradient`): towards the keys of the slots
    that favour ĉ more than the slots the image reads now, away from those that favour it
    less, a contrast between slots. As ``q`` is the spatial mean of ``f``, ``Σ_i α_i f_i`` is
    ``h·w`` times Grad-CAM's map of the score ``W_v[ĉ]·v``, in closed form from the memory,
    without a backward pass through the network (camkit's variant, issue 14).
    ``(B, c)``, ``(B, K)`` → ``(B, K, c)``."""
    p = memory.key_address_logits(queries).softmax(dim=1)[:, None, :]  # (B, 1, N)
    u = memory.fc.weight[target_indices, : memory.channels] @ memory.values.T  # (B, K, N)
    return key_gradient(memory, queries, p * (u - (p * u).sum(dim=2, keepdim=True)))


def address_gradient(memory: BiasReducingMemory, queries: Tensor, slots: Tensor) -> Tensor:
    """``α = ∂ log p_{n_ĉ}/∂q = Σ_n (δ_{n n_ĉ} − p_n) ∂ℓ_n/∂q`` (:func:`key_gradient`): how
    the query must change for the key address to read the found slot ``n_ĉ`` rather than the
    slots it reads now (the ``"address"`` base; camkit's variant, issue 14). ``(B, c)``,
    ``(B, K)`` slot indices → ``(B, K, c)``."""
    p = memory.key_address_logits(queries).softmax(dim=1)  # (B, N)
    found = torch.nn.functional.one_hot(slots, memory.num_slots).to(p)  # (B, K, N)
    return key_gradient(memory, queries, found - p[:, None, :])


def mcam_map(weights: Tensor, features: Tensor) -> Tensor:
    """``M-CAM_ĉ(x) = Σ_i w_i f_{x,i}`` (§1.5): ``(B, K, c)``, ``(B, c, h, w)`` →
    ``(B, K, h, w)``, before the post-processing of §0."""
    return torch.einsum("bkc,bchw->bkhw", weights, features)


def _check_targets(memory: BiasReducingMemory, activations: Tensor, targets: Tensor) -> None:
    if targets.dim() != 2 or targets.shape[0] != activations.shape[0]:
        raise ValueError(f"target_indices must be (B, K) with B = {activations.shape[0]}; got "
                         f"shape {tuple(targets.shape)}")
    if targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"target_indices must be integer class indices, got {targets.dtype}")
    if targets.numel() and (targets.min() < 0 or targets.max() >= memory.num_classes):
        raise ValueError(f"target classes must lie in [0, {memory.num_classes}) for this memory "
                         f"(trained on {memory.num_classes} classes); got "
                         f"[{int(targets.min())}, {int(targets.max())}]")
    if memory.keys.device != activations.device:
        device = str(activations.device)
        raise ValueError(f"the memory is on {memory.keys.device} but the activations are on "
                         f"{device}; move it with memory.to({device!r})")


@torch.no_grad()
def mcam_raw_maps(
    memory: BiasReducingMemory,
    activations: Tensor,
    target_indices: Tensor,
    generator: torch.Generator | None = None,
    *,
    sharpness: float = 1.0,
    base: str = "none",
    gradient_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """M-CAM raw maps for every image and target class (§1.6).

    Args:
        memory: a trained memory for this layer and input size.
        activations: ``(B, c, h, w)`` float32 target-layer features ``f``.
        target_indices: ``(B, K)`` long class indices.
        generator: seeds the slot-search noise (:func:`draw_slot_noise`); ``None`` uses the
            global RNG.
        sharpness: ``s`` of :func:`channel_weights` (1 = the seed's ``exp(τ)``).
        base: ``α`` of :func:`channel_weights`: ``"none"`` (the seed's), ``"slot"``
            (:func:`slot_profile`), ``"classifier"`` (:func:`classifier_weights`),
            ``"value"`` (:func:`value_gradient`), ``"address"`` (:func:`address_gradient`) or
            ``"gradcam"`` (the target network's Grad-CAM weights, given as
            ``gradient_weights`` ``(B, K, c)``).

    Returns:
        ``(maps (B, K, h, w), info)`` with ``info`` = ``{"slots": (B, K) long, "found": (B, K)
        bool (False: no slot lowers the score, the map uses the argmax slot anyway),
        "weights": (B, K, c) w, "drops": (B, K, N), "sharpness", "base"}``.
    """
    memory.check_features(activations)
    _check_targets(memory, activations, target_indices)
    target_indices = target_indices.long()
    queries = memory.pool(activations)
    noise = draw_slot_noise(memory, generator)
    search = slot_search(memory, queries, target_indices, noise)
    slot_maps = memory.spatial[search.slots]
    alpha = _base(base, memory, queries, search.slots, target_indices, gradient_weights)
    weights = channel_weights(channel_similarity(activations, slot_maps), sharpness, alpha)
    info = {"slots": search.slots, "found": search.found, "weights": weights,
            "drops": search.drops, "sharpness": sharpness, "base": base}
    return mcam_map(weights, activations), info


def _base(base: str, memory: BiasReducingMemory, queries: Tensor, slots: Tensor,
          target_indices: Tensor, gradient_weights: Tensor | None) -> Tensor | None:
    """The ``α`` ``(B, K, c)`` that ``base`` names (``None`` for ``"none"``)."""
    if base not in BASES:
        raise ValueError(f"base must be one of {BASES}, got {base!r}")
    if base == "gradcam" and gradient_weights is None:
        raise ValueError("base='gradcam' needs the target network's gradient_weights")
    return {"none": lambda: None, "slot": lambda: slot_profile(memory.spatial[slots]),
            "classifier": lambda: classifier_weights(memory, target_indices),
            "value": lambda: value_gradient(memory, queries, target_indices),
            "address": lambda: address_gradient(memory, queries, slots),
            "gradcam": lambda: gradient_weights}[base]()
