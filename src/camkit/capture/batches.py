"""Memory-bounded batches of model evaluations, shared by every perturbation method and by
the metrics' re-scoring (:mod:`camkit.metrics.scoring`).

DESIGN principle 5: a perturbation method counts the model evaluations it needs and spends
nothing beyond them. It describes its work as ``n`` items (one evaluation each) and a function
that builds and scores any subset of them; :func:`run_items` evaluates the items in batches
whose estimated memory stays within ``max_batch_memory`` bytes (or of exactly ``batch_size``
items). Each batch is built only when it runs, so the B×C perturbed inputs never exist at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from ..progress import Progress
from ..targets import ScoreFn, Scores
from . import folding
from .hooks import rescorer_for_inputs
from .layer_pass import LayerPass

DEFAULT_MAX_BATCH_MEMORY = 512 * 2**20  # bytes
# Peak memory of a no-grad forward pass per image, as a multiple of the input's bytes.
# Measured (peak RSS, CPU, 224²): ResNet-18 ≈ 11×, ResNet-50 ≈ 25-30×; 32 is conservative.
FORWARD_MEMORY_FACTOR = 32
BATCH_OPTIONS = ("batch_size", "max_batch_memory", "progress")
PRECISIONS = ("fp32", "bf16")

Scorer = Callable[[Tensor, Tensor], Tensor]


def _at_least_one(value: object, kinds: tuple[type, ...]) -> bool:
    return isinstance(value, kinds) and not isinstance(value, bool) and cast(float, value) >= 1


@dataclass(frozen=True)
class Batching:
    """How many evaluations run at once: exactly ``batch_size``, or (``batch_size=None``) as
    many as fit in ``max_batch_memory`` bytes; ``progress`` as in :mod:`camkit.progress`."""

    batch_size: int | None = None
    max_batch_memory: float = DEFAULT_MAX_BATCH_MEMORY
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.batch_size is not None and not _at_least_one(self.batch_size, (int,)):
            raise ValueError(f"batch_size must be a positive int or None, got {self.batch_size!r}")
        if not _at_least_one(self.max_batch_memory, (int, float)):
            raise ValueError("max_batch_memory must be a positive number of bytes, got "
                             f"{self.max_batch_memory!r}")

    def size_for(self, item_bytes: int) -> int:
        """Items per batch when one item needs about ``item_bytes`` bytes."""
        if self.batch_size is not None:
            return self.batch_size
        return max(1, int(self.max_batch_memory // max(1, item_bytes)))


def run_items(n_items: int, evaluate: Callable[[Tensor], Tensor], batch_size: int, *,
              device: torch.device, desc: str, progress: bool | None) -> Tensor:
    """``evaluate(indices) -> (n, K)`` over ``arange(n_items)`` in chunks of ``batch_size``;
    returns the ``(n_items, K)`` results in item order (``(0, 0)`` when there are none)."""
    results: list[Tensor] = []
    with Progress(n_items, desc, progress) as bar:
        for start in range(0, n_items, batch_size):
            indices = torch.arange(start, min(start + batch_size, n_items), device=device)
            results.append(evaluate(indices))
            bar.update(len(indices))
    return torch.cat(results) if results else torch.zeros(0, 0, device=device)


def forward_bytes(inputs: tuple[Tensor, ...]) -> int:
    """Estimated memory of one full-model evaluation of one image: its float32 inputs plus the
    forward pass's intermediate tensors (:data:`FORWARD_MEMORY_FACTOR` times the inputs)."""
    input_bytes = sum(t[0].numel() * 4 for t in inputs)
    return input_bytes * (1 + FORWARD_MEMORY_FACTOR)


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def input_scorer(layer_pass: LayerPass, score: Scores, precision: str, method: str) -> Scorer:
    """``f(first_input (n, C, H, W), rows) -> (n, K)``: the float32 scores (``score`` reads
    them from the model's outputs) of modified copies of the first input; the other inputs
    follow their ``rows``.

    The passes run the folded channels-last copy of the model when it reproduces the model's
    scores (:mod:`camkit.folding`; ``layer_pass.notes[method]["model"]`` says which model ran),
    take the inputs in channels-last layout, and run under bf16 autocast for
    ``precision="bf16"``."""
    check_precision(precision)
    inputs = layer_pass.inputs
    model, note = folding.evaluation_model(layer_pass.model, inputs, layer_pass.scores,
                                           layer_pass.output_scorer)
    layer_pass.notes.setdefault(method, {})["model"] = note
    rescore = rescorer_for_inputs(model, ScoreFn(None, score), len(inputs))
    device = inputs[0].device
    bf16 = precision == "bf16"

    def scores(first: Tensor, rows: Tensor) -> Tensor:
        if first.dim() == 4:
            first = first.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            return rescore((first, *(t[rows] for t in inputs[1:])), rows).float()

    return scores
