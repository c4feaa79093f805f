"""Occlusion sensitivity (Zeiler & Fergus, ECCV 2014), the gradient-free baseline of the
Grad-CAM paper: slide a window over the input, fill it with a constant, and record the drop of
the target score. A pixel's raw value is the mean drop over the windows that cover it, at input
resolution ``(B, K, H, W)``.

Window positions start at 0 and step by ``stride``; a last position flush with the far edge is
added when the steps do not reach it, so every pixel is covered. One evaluation per window
position and image, in memory-bounded batches (:mod:`camkit.capture.batches`).
"""

from __future__ import annotations

import torch
from torch import Tensor

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


def window_cover(length: int, window: int, stride: int, device: torch.device) -> Tensor:
    """``(P, length)`` float 0/1: row ``p`` marks the pixels covered by the ``p``-th window
    position along one axis."""
    window = min(window, length)
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    pixels = torch.arange(length, device=device)
    start = torch.tensor(starts, device=device)[:, None]
    return ((pixels >= start) & (pixels < start + window)).float()


def occlusion_map(drops: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Mean score drop of the windows covering each pixel: ``drops`` ``(B, K, Py, Px)`` with the
    window covers ``rows`` ``(Py, H)`` and ``cols`` ``(Px, W)`` → ``(B, K, H, W)``."""
    total = torch.einsum("bkpq,ph,qw->bkhw", drops, rows, cols)
    return total / torch.einsum("ph,qw->hw", rows, cols)


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


def _occlusion(layer_pass: LayerPass, window: int | tuple[int, int] = 32,
               stride: int | tuple[int, int] | None = None, fill: float | Tensor = 0.0,
               precision: str = "fp32", compile: bool = False, batch_size: int | None = None,
               max_batch_memory: float = DEFAULT_MAX_BATCH_MEMORY,
               progress: bool | None = None) -> Tensor:
    win = _pair(window, "window")
    step = _pair(stride, "stride") if stride is not None else (max(1, win[0] // 2),
                                                               max(1, win[1] // 2))
    batching = Batching(batch_size, max_batch_memory, progress)
    x = layer_pass.inputs[0]
    (height, width), device = layer_pass.input_size, x.device
    rows = window_cover(height, win[0], step[0], device)
    cols = window_cover(width, win[1], step[1], device)
    positions = len(rows) * len(cols)
    fill_value = torch.as_tensor(fill, dtype=x.dtype, device=device)
    score = input_scorer(layer_pass, layer_pass.output_scorer, precision, "occlusion", compile)

    def evaluate(items: Tensor) -> Tensor:
        image, position = items // positions, items % positions
        inside = rows[position // len(cols)][:, :, None] * cols[position % len(cols)][:, None, :]
        occluded = torch.where(inside[:, None].bool(), fill_value, x[image])
        return score(occluded, image)

    size = batching.size_for(forward_bytes(layer_pass.inputs))
    n_items = len(x) * positions
    scores = run_items(n_items, evaluate, size, device=device, desc="occlusion",
                       progress=batching.progress)
    drops = layer_pass.scores[:, None] - scores.view(len(x), positions, -1)
    drops = drops.permute(0, 2, 1).unflatten(2, (len(rows), len(cols)))
    layer_pass.notes["occlusion"].update(evaluations=n_items, batch_size=size,
                                         positions=(len(rows), len(cols)))
    return occlusion_map(drops, rows, cols)


register(Method(
    "occlusion", "drop of the score when a sliding window of the input is filled",
    "Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014",
    _occlusion,
    options=("window", "stride", "fill", "precision", "compile", *BATCH_OPTIONS),
    maths=(window_cover, occlusion_map),
))
