"""SmoothGrad-CAM++ (Omeiza et al. 2019): Grad-CAM++ with the gradient powers in its closed form
averaged over noisy copies of the input (SmoothGrad, Smilkov et al. 2017).

Cost: ``num_samples`` forward and backward passes per image (the graph starts at the target
layer), in memory-bounded batches of noisy images (a batch may hold several samples) with the
progress bar of every many-evaluation method (:mod:`camkit.capture.batches`). The noise is
drawn from the call's seeded generator, one ``(B, C, H, W)`` draw per sample, so a call is
reproducible and independent of the batch size. The activations of the clean input carry the map.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from ..capture import LayerPass
from ..capture.batches import BATCH_OPTIONS, DEFAULT_MAX_BATCH_MEMORY, Batching, forward_bytes
from ..progress import Progress
from .gradient import channel_terms, weighted_sum
from .registry import Method, register

# A forward and a backward pass from the layer hold about twice a forward pass's memory.
BACKWARD_MEMORY_FACTOR = 2


def smooth_gradcam_plus_plus_weights(activations: Tensor, moments: Tensor) -> Tensor:
    """SmoothGrad-CAM++ channel weights (Omeiza et al. 2019, eqs. 8-10, with ``Y = exp(s)``
    as in Grad-CAM++): with ``D̄ₚ = (1/n) Σ_m (∂s/∂A)ᵖ`` over ``n`` noisy inputs,
    ``α_ij = D̄₂ / (2 D̄₂ + (Σ_ab A^k_ab) D̄₃)`` (0 where it is 0/0 or the denominator is 0) and
    ``w_k = Σ_ij α_ij ReLU(D̄₁)``.

    ``activations`` ``(B, C, h, w)`` of the clean input, ``moments`` ``(3, B, K, C, h, w)``
    holding ``D̄₁, D̄₂, D̄₃`` → ``(B, K, C)``."""
    mean, square, cube = moments
    channel_sum = activations.sum(dim=(-2, -1))[:, None, :, None, None]
    denominator = 2 * square + channel_sum * cube
    alpha = (square / denominator).where((square != 0) & (denominator != 0), 0.0)
    return (alpha * mean.clamp(min=0)).sum(dim=(-2, -1))


def smooth_gradcam_plus_plus(activations: Tensor, moments: Tensor) -> Tensor:
    """SmoothGrad-CAM++ map ``Σ_k w_k A^k`` with :func:`smooth_gradcam_plus_plus_weights`:
    ``(B, C, h, w)`` and ``(3, B, K, C, h, w)`` → ``(B, K, h, w)``."""
    return weighted_sum(smooth_gradcam_plus_plus_weights(activations, moments), activations)


def noisy_gradient_moments(layer_pass: LayerPass, num_samples: int, noise_std: float,
                           batching: Batching) -> Tensor:
    """``(3, B, K, C, h, w)``: the means of ``g``, ``g²`` and ``g³``, ``g = ∂s/∂A`` at
    ``x + ε_m``, ``ε_m ~ N(0, σ²)`` drawn per sample ``m < num_samples``; the
    ``num_samples · B`` noisy images run in batches that may span samples."""
    inputs = layer_pass.inputs
    x = inputs[0]
    gradients_at = layer_pass.gradients_at
    size = batching.size_for(BACKWARD_MEMORY_FACTOR * forward_bytes(inputs))
    sums: Tensor | None = None
    with Progress(num_samples * len(x), "smoothgradcam++", batching.progress) as bar:
        for noisy, rows in _noisy_batches(layer_pass, num_samples, noise_std, size):
            g = gradients_at((noisy, *(t[rows] for t in inputs[1:])), rows)
            powers = torch.stack([g, g * g, g * g * g])
            if sums is None:
                sums = powers.new_zeros(3, len(x), *powers.shape[2:])
            sums.index_add_(1, rows, powers)
            bar.update(len(rows))
    layer_pass.notes["smoothgradcam++"] = {"evaluations": num_samples * len(x),
                                           "batch_size": size}
    assert sums is not None
    return sums / num_samples


def _noisy_batches(layer_pass: LayerPass, num_samples: int, noise_std: float, size: int
                   ) -> Iterator[tuple[Tensor, Tensor]]:
    """The noisy images ``x_b + σ ε_m,b`` in (sample, image) order, in batches of at most
    ``size``, each with its images' indices ``b``; ``ε_m`` is one ``(B, C, H, W)`` draw of the
    pass's generator, made when sample ``m`` is first needed."""
    x = layer_pass.inputs[0]
    images = torch.arange(len(x), device=x.device)
    held: list[tuple[Tensor, Tensor]] = []
    for m in range(num_samples):
        noise = torch.randn(x.shape, generator=layer_pass.generator, device=x.device,
                            dtype=x.dtype)
        held.append((x + noise_std * noise, images))
        count = sum(len(rows) for _, rows in held)
        while count >= size or (m == num_samples - 1 and count):
            noisy, rows = (torch.cat(part) for part in zip(*held, strict=True))
            yield noisy[:size], rows[:size]
            held = [(noisy[size:], rows[size:])] if count > size else []
            count = max(0, count - size)


def _weights(layer_pass: LayerPass, num_samples: int = 4, noise_std: float = 0.3,
             batch_size: int | None = None, max_batch_memory: float = DEFAULT_MAX_BATCH_MEMORY,
             progress: bool | None = None) -> Tensor:
    """SmoothGrad-CAM++'s ``(B, K, C)`` weights on the pass (the options of the method)."""
    if not (isinstance(num_samples, int) and num_samples >= 1):
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
    batching = Batching(batch_size, max_batch_memory, progress)
    moments = noisy_gradient_moments(layer_pass, num_samples, noise_std, batching)
    return smooth_gradcam_plus_plus_weights(layer_pass.activations, moments)


def _smoothgradcampp(layer_pass: LayerPass, num_samples: int = 4, noise_std: float = 0.3,
                     batch_size: int | None = None,
                     max_batch_memory: float = DEFAULT_MAX_BATCH_MEMORY,
                     progress: bool | None = None) -> Tensor:
    weights = _weights(layer_pass, num_samples, noise_std, batch_size, max_batch_memory,
                       progress)
    return weighted_sum(weights, layer_pass.activations)


def _terms(layer_pass: LayerPass, **options: Any) -> Tensor:
    return channel_terms(_weights(layer_pass, **options), layer_pass.activations)


register(Method(
    "smoothgradcam++", "Grad-CAM++ with gradient powers averaged over noisy inputs",
    "Omeiza et al., Smooth Grad-CAM++, 2019 (arXiv:1908.01224)", _smoothgradcampp,
    channel_terms=_terms,
    options=("num_samples", "noise_std", *BATCH_OPTIONS),
    maths=(smooth_gradcam_plus_plus, smooth_gradcam_plus_plus_weights),
))
