"""Memory-bounded batches of model evaluations, shared by every perturbation method.

DESIGN principle 5: a perturbation method counts the model evaluations it needs and spends
nothing beyond them. It describes its work as ``n`` items (one evaluation each) and a function
that builds and scores any subset of them; :func:`run_items` evaluates the items in batches
whose estimated memory stays within ``max_batch_memory`` bytes (or of exactly ``batch_size``
items). Each batch is built only when it runs, so the B×C perturbed inputs never exist at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..progress import Progress
from .registry import LayerPass

DEFAULT_MAX_BATCH_MEMORY = 512 * 2**20  # bytes
# Peak memory of a no-grad forward pass per image, as a multiple of the input's bytes.
# Measured (peak RSS, CPU, 224²): ResNet-18 ≈ 11×, ResNet-50 ≈ 25-30×; 32 is conservative.
FORWARD_MEMORY_FACTOR = 32
BATCH_OPTIONS = ("batch_size", "max_batch_memory", "progress")
PRECISIONS = ("fp32", "bf16")

Scorer = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Batching:
    """How many evaluations run at once: exactly ``batch_size``, or (``batch_size=None``) as
    many as fit in ``max_batch_memory`` bytes; ``progress`` as in :mod:`camkit.progress`."""

    batch_size: int | None = None
    max_batch_memory: int = DEFAULT_MAX_BATCH_MEMORY
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.batch_size is not None and not (
            isinstance(self.batch_size, int) and self.batch_size >= 1
        ):
            raise ValueError(f"batch_size must be a positive int or None, got {self.batch_size!r}")
        if not (isinstance(self.max_batch_memory, int) and self.max_batch_memory >= 1):
            raise ValueError("max_batch_memory must be a positive number of bytes, got "
                             f"{self.max_batch_memory!r}")

    def size_for(self, item_bytes: int) -> int:
        """Items per batch when one item needs about ``item_bytes`` bytes."""
        if self.batch_size is not None:
            return self.batch_size
        return max(1, self.max_batch_memory // max(1, item_bytes))


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


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast for ``precision="bf16"``, nothing for ``"fp32"``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def input_scorer(layer_pass: LayerPass, rescore: Callable[[tuple[Tensor, ...], Tensor], Tensor],
                 precision: str) -> Scorer:
    """``f(first_input (n, C, H, W), rows) -> (n, K)`` float32 scores of modified copies of the
    first input (other inputs follow their ``rows``), run in channels-last layout, the fastest
    exact layout for convolutions, and under bf16 autocast for ``precision="bf16"``."""
    others = layer_pass.inputs[1:]
    device = layer_pass.inputs[0].device

    def score(first: Tensor, rows: Tensor) -> Tensor:
        if first.dim() == 4:
            first = first.contiguous(memory_format=torch.channels_last)
        with autocast(precision, device):
            return rescore((first, *(t[rows] for t in others)), rows).float()

    return score
