"""Fitting a weight bank (ALGORITHMS §2.3-§2.4 step 1): embed every training image, sample
``T`` triplets per image from the labels, average its anchor grad-weights over them, keep the
top-M channels.

Cost: one forward pass without autograd per image (the embeddings, which the sampling needs
for all images before any triplet is formed), then per anchor one forward pass whose graph
starts at the target layer and one backward to that layer. The positives and negatives are
bank images whose embeddings are already known, so they are not run again. For Grad-CAM the
weights of the mean loss equal the mean of the per-triplet weights (the gradient is linear),
so ``T`` costs nothing beyond the sampling; Grad-CAM++ needs each triplet's gradient (one
batched backward over the ``T`` triplets, in memory-bounded chunks).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .. import capture
from ..api import resolve_layer
from ..capture.layers import LayerSpec, Reshape
from ..progress import Progress
from .bank import WeightBank, search_space
from .triplets import MODES, as_labels, sample_triplets
from .weights import VARIANTS, embedding_of, triplet_weights
from .weights import top_m as keep_top_m


class ImageSet(Protocol):
    """A data set of images: ``len(data)`` and ``data[i]`` (an image, or a tuple or dict
    holding one)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


ImageData = Tensor | ImageSet


def image_batch(data: ImageData, rows: Sequence[int] | Tensor) -> Tensor:
    """Images ``rows`` of ``data`` stacked: ``data`` is a ``(N, C, H, W)`` tensor, or a
    sequence / map-style data set whose items are image tensors or tuples starting with one."""
    if isinstance(data, Tensor):
        return data[torch.as_tensor(rows, dtype=torch.long, device=data.device)]
    items = [data[int(i)] for i in rows]
    return torch.stack([item[0] if isinstance(item, (tuple, list)) else item for item in items])


def embed(model: nn.Module, data: ImageData, batch_size: int = 64, *, eval_mode: bool = True,
          progress: bool | None = None) -> Tensor:
    """``(N, D)`` float32 embeddings (the model's output) of every image of ``data``, in
    batches, without autograd; the model is borrowed and restored. ``progress``: see
    :class:`camkit.progress.Progress`."""
    n = len(data)
    out = []
    with capture.borrowed(model, eval_mode), torch.no_grad(), \
            Progress(n, "embedding", progress, unit="img") as bar:
        for start in range(0, n, batch_size):
            batch = image_batch(data, range(start, min(n, start + batch_size)))
            out.append(embedding_of(model(batch)).float())
            bar.update(len(batch))
    return torch.cat(out)


def fit_weight_bank(
    model: nn.Module,
    layer: LayerSpec,
    data: ImageData,
    labels: Sequence[int] | Tensor,
    *,
    triplets_per_image: int = 100,
    top_m: int | None = 50,
    margin: float = 0.2,
    mode: str = "active",
    variant: str = "gradcam",
    sign: float = -1.0,
    hinge: bool = True,
    normalize: bool = True,
    batch_size: int = 32,
    seed: int = 0,
    reshape: Reshape | None = None,
    eval_mode: bool = True,
    progress: bool | None = None,
) -> WeightBank:
    """A :class:`WeightBank` of ``data`` (ALGORITHMS §2.3-§2.4; defaults of OP-16 to OP-19).

    Args:
        model: the embedding network; its output (or its first tensor) is the ``(B, D)``
            embedding the triplet loss was trained on. Borrowed, never changed.
        layer: the target layer (module, dotted name, or ``None`` for the last spatial one).
        data: ``(N, C, H, W)`` preprocessed images, or a data set of them (items may be
            tuples starting with the image).
        labels: ``(N,)`` class labels; at least two classes, two images per class.
        triplets_per_image: ``T``, triplets per image in the anchor role.
        top_m: ``M`` channels kept per image (``None``: all).
        margin: the triplet margin ``m`` (use the training margin).
        mode: triplet sampling, one of ``"active"``, ``"semihard"``, ``"hard"``,
            ``"random"`` (see :mod:`camkit.embedding.triplets`).
        variant: ``"gradcam"`` or ``"gradcam++"`` weights.
        sign: ``-1`` weights by ``−∂L/∂A`` (OP-16), ``+1`` by ``∂L/∂A``.
        hinge: keep ``[·]_+`` in the loss (inactive triplets give zero gradients).
        normalize: search neighbours on L2-normalised embeddings.
        batch_size: images per forward pass.
        seed: seeds the triplet sampling.
        reshape: maps the layer output to ``(B, C, h, w)`` when it cannot be inferred.
        eval_mode: run the model in eval mode (its flags are restored).
        progress: progress bars on stderr: ``None`` when the work takes more than a few
            seconds, ``True`` always, ``False`` never (:class:`camkit.progress.Progress`).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    if mode not in MODES:
        raise ValueError(f"unknown triplet mode {mode!r}; choose one of {MODES}")
    n = len(data)
    if n == 0:
        raise ValueError("cannot fit a weight bank on no images")
    labels = as_labels(labels, n)
    probe = image_batch(data, [0])
    layer_name, module = resolve_layer(model, layer, (probe,))
    embeddings = embed(model, data, batch_size, eval_mode=eval_mode, progress=progress)
    triplets = sample_triplets(embeddings, labels, triplets_per_image, margin, mode,
                               generator=torch.Generator().manual_seed(seed))
    channels, weights, active = [], [], []
    with capture.borrowed(model, eval_mode), \
            Progress(n, "grad-weights", progress, unit="img") as bar:
        for start in range(0, n, batch_size):
            rows = torch.arange(start, min(n, start + batch_size))
            positives = embeddings[triplets.positives[rows]].to(probe.device)
            negatives = embeddings[triplets.negatives[rows]].to(probe.device)
            anchors = triplet_weights(
                model, module, layer_name, image_batch(data, rows),
                partial(_with_partners, positives=positives, negatives=negatives), margin=margin,
                variant=variant,
                sign=sign, hinge=hinge, per_triplet=variant == "gradcam++", reshape=reshape)
            c, w = keep_top_m(anchors.weights.mean(dim=1), top_m)
            channels.append(c.cpu())
            weights.append(w.cpu())
            active.append((anchors.losses > 0).sum(dim=1).cpu())
            bar.update(len(rows))
    num_channels = anchors.activations.shape[1]
    settings = {"triplets_per_image": triplets_per_image, "margin": margin, "mode": mode,
                "sign": sign, "hinge": hinge, "variant": variant, "seed": seed}
    return WeightBank(search_space(embeddings, normalize).cpu(), torch.cat(channels),
                      torch.cat(weights).float(), labels, torch.cat(active).long(),
                      triplets.fallback, layer_name, num_channels, normalize, settings)


def _with_partners(embeddings: Tensor, positives: Tensor, negatives: Tensor
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """``(anchors, positives, negatives)`` for :func:`triplet_weights`: the fitted images'
    own embeddings as anchors, with their sampled partners."""
    return embeddings, positives, negatives
