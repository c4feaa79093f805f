"""Deep Feature Factorization (Collins, Achanta & Süsstrunk, ECCV 2018): the concepts a layer
sees across a batch of images, and where each image shows each concept. Not a per-target
map, so it has its own small API: ``concepts × images``.

The layer's activations of all ``B`` images are one non-negative matrix ``V`` ``(C, B·h·w)``
(each channel shifted by its minimum, as pytorch-grad-cam does), factorised as ``V ≈ W H``
with ``n`` concepts by Lee & Seung's multiplicative updates, batched in torch on the input's
device: ``W`` ``(C, n)`` holds the concepts in the layer's channel space, ``H`` ``(n, B·h·w)``
their heat maps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .capture import borrowed, choose_layer
from .capture.features import layer_features
from .postprocess import postprocess

EPS = 1e-10


def nmf(v: Tensor, n: int, iterations: int = 1000,
        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Non-negative ``V ≈ W H`` (Lee & Seung, NIPS 2001, Theorem 1): from a seeded uniform
    start scaled to ``√(mean V / n)``, ``iterations`` rounds of ``H ← H ∘ (WᵀV) / (WᵀWH)`` and
    ``W ← W ∘ (VHᵀ) / (WHHᵀ)``, each of which never increases ``‖V − WH‖_F``.
    ``V`` ``(C, P)`` ≥ 0 → ``W`` ``(C, n)``, ``H`` ``(n, P)``."""
    scale = (v.mean() / n).sqrt()
    w = torch.rand(v.shape[0], n, generator=generator, device=v.device, dtype=v.dtype) * scale
    h = torch.rand(n, v.shape[1], generator=generator, device=v.device, dtype=v.dtype) * scale
    for _ in range(iterations):
        h = h * (w.T @ v) / (w.T @ w @ h + EPS)
        w = w * (v @ h.T) / (w @ (h @ h.T) + EPS)
    return w, h


def relative_error(v: Tensor, w: Tensor, h: Tensor) -> float:
    """``‖V − WH‖_F / ‖V‖_F``."""
    return float(torch.linalg.matrix_norm(v - w @ h) / torch.linalg.matrix_norm(v).clamp(min=EPS))


@dataclass
class Concepts:
    """What :func:`factorize` found.

    ``concepts`` ``(n, C)``: each concept as a vector of the layer's channels (``W`` plus the
    channel offsets); ``maps`` ``(B, n, H, W)`` in [0, 1]: where image ``b`` shows concept
    ``i``; ``raw`` ``(B, n, h, w)``: the same, before upsampling and normalisation;
    ``error``: ``‖V − WH‖_F / ‖V‖_F``; ``scores`` ``(n, ...)``: ``classifier(concepts)`` when
    a classifier was given (which classes each concept stands for), else ``None``.
    """

    concepts: Tensor
    maps: Tensor
    raw: Tensor
    error: float
    scores: Tensor | None = None


def factorize(model: nn.Module, x: Tensor, n_concepts: int = 5, layer: str | None = None, *,
              iterations: int = 1000, seed: int = 0,
              classifier: Callable[[Tensor], Tensor] | None = None) -> Concepts:
    """Deep Feature Factorization of ``model``'s ``layer`` (``None``: the automatic choice)
    on the images ``x`` ``(B, C_in, H, W)`` into ``n_concepts`` concepts.

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
    ...                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    >>> found = camkit.factorize(model, torch.rand(2, 3, 16, 16), n_concepts=3, layer="1",
    ...                          classifier=model[4])
    >>> tuple(found.concepts.shape), tuple(found.maps.shape), tuple(found.scores.shape)
    ((3, 8), (2, 3, 16, 16), (3, 4))
    """
    if not (isinstance(n_concepts, int) and n_concepts >= 1):
        raise ValueError(f"n_concepts must be a positive int, got {n_concepts!r}")
    if layer is None:
        with borrowed(model):
            layer = choose_layer(model, (x,))
    acts = layer_features(model, layer, x).nan_to_num(0.0)
    b, c, h, w = acts.shape
    v = acts.transpose(0, 1).reshape(c, -1)
    offset = v.amin(dim=1, keepdim=True)
    v = v - offset
    generator = torch.Generator(device=x.device).manual_seed(seed)
    weights, heat = nmf(v, n_concepts, iterations, generator)
    concepts = (weights + offset).T
    raw = heat.reshape(n_concepts, b, h, w).transpose(0, 1)
    maps, _ = postprocess(raw, (x.shape[-2], x.shape[-1]), relu=False)
    scores = None
    if classifier is not None:
        with torch.no_grad():
            scores = classifier(concepts)
    return Concepts(concepts, maps, raw, relative_error(v, weights, heat), scores)
