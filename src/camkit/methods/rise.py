"""RISE, Randomized Input Sampling for Explanation (Petsiuk et al., BMVC 2018): the black-box
baseline. The model scores the input under ``N`` random smooth masks, and a pixel's saliency
is the score-weighted mean of the masks that kept it.

The same ``N`` masks serve every image. They are never all in memory: each batch of (image,
mask) evaluations builds its masks from the small random grids and shifts drawn once from the
call's seeded generator, in memory-bounded batches (:mod:`camkit.capture.batches`). Raw maps
are at input resolution ``(B, K, H, W)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from ..capture import LayerPass
from ..capture.batches import (
    BATCH_OPTIONS,
    DEFAULT_MAX_BATCH_MEMORY,
    Batching,
    forward_bytes,
    input_scorer,
    run_items,
)
from .registry import Method, register
from .score import class_probabilities


def rise_masks(grids: Tensor, shifts: Tensor, size: tuple[int, int]) -> Tensor:
    """RISE masks (Petsiuk et al. 2018, §3.2): binary grids ``(n, s, s)`` are upsampled
    bilinearly to ``(s + 1) · ⌈H/s⌉ × (s + 1) · ⌈W/s⌉`` and cropped to ``(H, W)`` at the
    offsets ``shifts`` ``(n, 2)`` (each below its cell size) → ``(n, H, W)`` in [0, 1]."""
    s = grids.shape[-1]
    cell = (math.ceil(size[0] / s), math.ceil(size[1] / s))
    up = F.interpolate(grids[:, None].float(), size=((s + 1) * cell[0], (s + 1) * cell[1]),
                       mode="bilinear", align_corners=False)[:, 0]
    rows = shifts[:, 0, None] + torch.arange(size[0], device=grids.device)  # (n, H)
    cols = shifts[:, 1, None] + torch.arange(size[1], device=grids.device)  # (n, W)
    picked = up.gather(1, rows[:, :, None].expand(-1, -1, up.shape[2]))
    return picked.gather(2, cols[:, None, :].expand(-1, size[0], -1))


def rise_saliency(scores: Tensor, masks: Tensor, keep: float, n_masks: int) -> Tensor:
    """The Monte Carlo saliency (eq. 6): ``S = (1 / (N p)) Σ_i f(X ∘ M_i) M_i``, ``p`` the
    probability that a grid cell is kept. ``scores`` ``(n, K)`` of ``n`` of the ``N`` masks
    ``(n, H, W)`` → their share ``(K, H, W)`` of the sum."""
    return torch.einsum("nk,nhw->khw", scores, masks) / (n_masks * keep)


def _rise(layer_pass: LayerPass, num_masks: int = 4000, cells: int = 7, keep: float = 0.5,
          probability: bool = True, precision: str = "fp32", compile: bool = False,
          batch_size: int | None = None, max_batch_memory: float = DEFAULT_MAX_BATCH_MEMORY,
          progress: bool | None = None) -> Tensor:
    for name, value in (("num_masks", num_masks), ("cells", cells)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep!r}")
    batching = Batching(batch_size, max_batch_memory, progress)
    x = layer_pass.inputs[0]
    size, device, gen = layer_pass.input_size, x.device, layer_pass.generator
    grids = torch.rand((num_masks, cells, cells), generator=gen, device=device) < keep
    shifts = torch.stack([torch.randint(0, math.ceil(n / cells), (num_masks,), generator=gen,
                                        device=device) for n in size], dim=1)
    read = class_probabilities(layer_pass) if probability else layer_pass.output_scorer
    score = input_scorer(layer_pass, read, precision, "rise", compile)
    saliency = x.new_zeros(len(x), layer_pass.scores.shape[1], *size, dtype=torch.float32)

    def evaluate(items: Tensor) -> Tensor:
        image, mask = items // num_masks, items % num_masks
        masks = rise_masks(grids[mask], shifts[mask], size)
        scores = score(x[image] * masks[:, None].to(x.dtype), image)
        for b in image.unique():
            rows = image == b
            saliency[b] += rise_saliency(scores[rows], masks[rows], keep, num_masks)
        return scores

    batch = batching.size_for(forward_bytes(layer_pass.inputs))
    run_items(len(x) * num_masks, evaluate, batch, device=device, desc="rise",
              progress=batching.progress)
    layer_pass.notes["rise"].update(evaluations=len(x) * num_masks, batch_size=batch)
    return saliency


register(Method(
    "rise", "score-weighted mean of random smooth masks of the input (black box)",
    "Petsiuk et al., RISE: Randomized Input Sampling for Explanation of Black-box Models, "
    "BMVC 2018 (arXiv:1806.07421)", _rise,
    options=("num_masks", "cells", "keep", "probability", "precision", "compile", *BATCH_OPTIONS),
    maths=(rise_saliency, rise_masks),
))
