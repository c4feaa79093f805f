"""Deep Feature Factorization (Collins, Achanta & Süsstrunk, ECCV 2018): the concepts a layer
sees across a batch of images, and where each image shows each concept. Not a per-target
map, so it has its own small API: ``concepts × images``.

The layer's activations of all ``B`` images are one non-negative matrix ``V`` ``(C, B·h·w)``
(each channel shifted by its minimum, as pytorch-grad-cam does), factorised as ``V ≈ W H``
with ``n`` concepts by hierarchical alternating least squares in torch on the input's
device: ``W`` ``(C, n)`` holds the concepts in the layer's channel space, ``H`` ``(n, B·h·w)``
their heat maps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .capture import borrowed, choose_layer
from .capture.features import layer_features
from .postprocess import postprocess

EPS = 1e-10
SWEEPS = 3  # coordinate sweeps over one factor per product with the other (Gillis & Glineur)


def nmf(v: Tensor, n: int, tol: float = 1e-4, max_iter: int = 500,
        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Non-negative ``V ≈ W H`` by hierarchical alternating least squares (Cichocki & Phan,
    IEICE 2009; the coordinate descent of scikit-learn's NMF, with Gillis & Glineur's repeated
    sweeps, Neural Computation 2012). From a seeded uniform start scaled to ``√(mean V / n)``,
    each round updates ``W`` then ``H`` one component ``t`` at a time, each update the exact
    minimiser of ``‖V − WH‖_F`` over that row:

    ``H_t ← max(0, H_t + ((WᵀV)_t − (WᵀW)_t H) / (WᵀW)_tt)`` (``W`` likewise with ``Vᵀ``),

    so no update increases the error. It stops when a round lowers ``‖V − WH‖²`` by at most
    ``tol`` of its value, or after ``max_iter`` rounds.
    ``V`` ``(C, P)`` ≥ 0 → ``W`` ``(C, n)``, ``H`` ``(n, P)``."""
    scale = (v.mean() / n).sqrt()
    w = torch.rand(n, v.shape[0], generator=generator, device=v.device, dtype=v.dtype) * scale
    h = torch.rand(n, v.shape[1], generator=generator, device=v.device, dtype=v.dtype) * scale
    vt, total, previous = v.T.contiguous(), v.square().sum(dtype=torch.float64), math.inf
    for _ in range(max_iter):
        for rows, other, data in ((w, h, vt), (h, w, v)):
            gram, cross = other @ other.T, other @ data
            _sweep_rows(rows, gram, cross)
        # ‖V − WH‖² = ‖V‖² − 2⟨H, WᵀV⟩ + ⟨HHᵀ, WᵀW⟩, from the H step's products
        error = float(total - 2 * (h * cross).sum(dtype=torch.float64)
                      + ((h @ h.T) * gram).sum(dtype=torch.float64))
        if error >= previous * (1 - tol):
            break
        previous = error
    return w.T, h


def _sweep_rows(rows: Tensor, gram: Tensor, cross: Tensor) -> None:
    """``SWEEPS`` in-place coordinate sweeps over the ``n`` rows ``(n, m)`` of one factor,
    given the other factor's ``gram`` ``(n, n)`` and its product ``cross`` ``(n, m)`` with
    the data. A row whose partner row is empty (``gram_tt = 0``) does not enter the product and
    is left as it is."""
    scale = gram.diagonal().clamp(min=EPS)[:, None]
    gram, cross = gram / scale, cross / scale
    for _ in range(SWEEPS):
        for t in range(rows.shape[0]):
            rows[t] = (rows[t] + torch.addmv(cross[t], rows.T, gram[t], alpha=-1)).clamp_(min=0)


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
              tol: float = 1e-4, max_iter: int = 500, seed: int = 0,
              classifier: Callable[[Tensor], Tensor] | None = None) -> Concepts:
    """Deep Feature Factorization of ``model``'s ``layer`` (``None``: the automatic choice)
    on the images ``x`` ``(B, C_in, H, W)`` into ``n_concepts`` concepts. The factorisation
    (:func:`nmf`) stops when a round lowers the squared error by at most ``tol`` of its value
    (at most ``max_iter`` rounds), seeded by ``seed``.

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
    if not (tol >= 0 and isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"need tol >= 0 and a positive int max_iter, got {tol!r}, {max_iter!r}")
    if layer is None:
        with borrowed(model):
            layer = choose_layer(model, (x,))
    acts = layer_features(model, layer, x).nan_to_num(0.0)
    b, c, h, w = acts.shape
    v = acts.transpose(0, 1).reshape(c, -1)
    offset = v.amin(dim=1, keepdim=True)
    v = v - offset
    generator = torch.Generator(device=x.device).manual_seed(seed)
    weights, heat = nmf(v, n_concepts, tol, max_iter, generator)
    concepts = (weights + offset).T
    raw = heat.reshape(n_concepts, b, h, w).transpose(0, 1)
    maps, _ = postprocess(raw, (x.shape[-2], x.shape[-1]), relu=False)
    scores = None
    if classifier is not None:
        with torch.no_grad():
            scores = classifier(concepts)
    return Concepts(concepts, maps, raw, relative_error(v, weights, heat), scores)
