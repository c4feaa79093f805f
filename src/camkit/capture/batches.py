"""Memory-bounded batches of model evaluations, shared by every perturbation method and by
the metrics' re-scoring (:mod:`camkit.metrics.scoring`).

DESIGN principle 5: a perturbation method counts the model evaluations it needs and spends
nothing beyond them. It describes its work as ``n`` items (one evaluation each) and a function
that builds and scores any subset of them; :func:`run_items` evaluates the items in batches
whose estimated memory stays within ``max_batch_memory`` bytes (or of exactly ``batch_size``
items). Each batch is built only when it runs, so the B×C perturbed inputs never exist at once.

The fastest batch is not always the largest that fits: on a CPU, a network whose activations
outgrow the caches runs more slowly per image in large batches (EfficientNet-Lite0 at 224²:
about twice as slow per image at 32 as at 8). ``batch_size="auto"`` finds the size while the
work runs (:class:`SizeSearch`): no evaluation is spent on measuring.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Literal, cast

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
BatchSize = int | Literal["auto"] | None
AUTO: Literal["auto"] = "auto"


def _at_least_one(value: object, kinds: tuple[type, ...]) -> bool:
    return isinstance(value, kinds) and not isinstance(value, bool) and cast(float, value) >= 1


_found: OrderedDict[Hashable, int] = OrderedDict()  # the sizes searches found, by their key
_REMEMBERED = 256


@dataclass
class SizeSearch:
    """The batch size that evaluates items fastest, found on the items themselves.

    After one untimed warm-up batch, batches double in size from ``start`` (up to ``cap``, the
    memory bound) while the time per item falls by more than ``gain``; the fastest size is then
    kept for the rest of the work, and remembered under ``key`` (say the model and the item's
    shape) for the next work with that key, which starts at it directly."""

    cap: int
    key: Hashable | None = None
    start: int = 4
    gain: float = 0.05
    size: int = field(init=False)
    best: tuple[int, float] | None = field(init=False, default=None)
    settled: bool = field(init=False, default=False)
    warm: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        known = _found.get(self.key) if self.key is not None else None
        self.settled = known is not None
        self.size = min(self.cap, known or self.start)

    def next_size(self, items: int, seconds: float) -> int:
        """The size of the next batch, after one of ``items`` items took ``seconds``."""
        if self.settled or items < self.size:  # a short last batch says nothing
            return self.size
        if not self.warm:
            self.warm = True
            return self.size
        per_item = seconds / items
        if self.best is None or per_item < (1 - self.gain) * self.best[1]:
            self.best = (self.size, per_item)
            if self.size < self.cap:
                self.size = min(2 * self.size, self.cap)
                return self.size
        self.size, self.settled = self.best[0], True
        if self.key is not None:
            _found[self.key] = self.size
            _found.move_to_end(self.key)
            while len(_found) > _REMEMBERED:
                _found.popitem(last=False)
        return self.size


@dataclass(frozen=True)
class Batching:
    """How many evaluations run at once: exactly ``batch_size``; (``None``) as many as fit in
    ``max_batch_memory`` bytes; or (``"auto"``) the fastest size that fits, found while the
    work runs (:class:`SizeSearch`). ``progress`` as in :mod:`camkit.progress`."""

    batch_size: BatchSize = None
    max_batch_memory: float = DEFAULT_MAX_BATCH_MEMORY
    progress: bool | None = None

    def __post_init__(self) -> None:
        if (self.batch_size is not None and self.batch_size != AUTO
                and not _at_least_one(self.batch_size, (int,))):
            raise ValueError(f"batch_size must be a positive int, 'auto' or None, got "
                             f"{self.batch_size!r}")
        if not _at_least_one(self.max_batch_memory, (int, float)):
            raise ValueError("max_batch_memory must be a positive number of bytes, got "
                             f"{self.max_batch_memory!r}")

    def size_for(self, item_bytes: int) -> int:
        """Items per batch when one item needs about ``item_bytes`` bytes (for ``"auto"``, the
        most that fit)."""
        if isinstance(self.batch_size, int):
            return self.batch_size
        return max(1, int(self.max_batch_memory // max(1, item_bytes)))

    def sizes(self, item_bytes: int, key: Hashable | None = None) -> int | SizeSearch:
        """:meth:`size_for`, or for ``batch_size="auto"`` a :class:`SizeSearch` below it,
        remembered under ``key``: what :func:`run_items` takes."""
        fits = self.size_for(item_bytes)
        return SizeSearch(fits, key) if self.batch_size == AUTO else fits


def run_items(n_items: int, evaluate: Callable[[Tensor], Tensor], batch_size: int | SizeSearch,
              *, device: torch.device, desc: str, progress: bool | None) -> Tensor:
    """``evaluate(indices) -> (n, K)`` over ``arange(n_items)`` in chunks of ``batch_size``
    (or of the sizes a :class:`SizeSearch` picks); returns the ``(n_items, K)`` results in item
    order (``(0, 0)`` when there are none)."""
    search = batch_size if isinstance(batch_size, SizeSearch) else None
    size = search.size if search is not None else cast(int, batch_size)
    if search is not None and device.type != "cpu":  # asynchronous: timing would mislead,
        size, search = search.cap, None  # and accelerators run large batches best
    results: list[Tensor] = []
    start = 0
    with Progress(n_items, desc, progress) as bar:
        while start < n_items:
            indices = torch.arange(start, min(start + size, n_items), device=device)
            began = time.perf_counter()
            results.append(evaluate(indices))
            if search is not None:
                size = search.next_size(len(indices), time.perf_counter() - began)
            bar.update(len(indices))
            start += len(indices)
    return torch.cat(results) if results else torch.zeros(0, 0, device=device)


def forward_bytes(inputs: tuple[Tensor, ...]) -> int:
    """Estimated memory of one full-model evaluation of one image: its float32 inputs plus the
    forward pass's intermediate tensors (:data:`FORWARD_MEMORY_FACTOR` times the inputs)."""
    input_bytes = sum(t[0].numel() * 4 for t in inputs)
    return input_bytes * (1 + FORWARD_MEMORY_FACTOR)


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def input_scorer(layer_pass: LayerPass, score: Scores, precision: str, method: str,
                 compile: bool = False) -> Scorer:
    """``f(first_input (n, C, H, W), rows) -> (n, K)``: the float32 scores (``score`` reads
    them from the model's outputs) of modified copies of the first input; the other inputs
    follow their ``rows``.

    The passes run the folded channels-last copy of the model when it reproduces the model's
    scores (:mod:`camkit.folding`; ``layer_pass.notes[method]["model"]`` says which model ran),
    take the inputs in channels-last layout, and run under bf16 autocast for
    ``precision="bf16"``. With ``compile=True`` that model runs compiled by ``torch.compile``
    (:func:`camkit.capture.folding.compiled_model`; the notes say whether it compiled and how
    long the first batch took, compilation included)."""
    check_precision(precision)
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be True or False, got {compile!r}")
    inputs = layer_pass.inputs
    model, note = folding.evaluation_model(layer_pass.model, inputs, layer_pass.scores,
                                           layer_pass.output_scorer)
    notes = layer_pass.notes.setdefault(method, {})
    notes["model"] = note
    if compile:
        model = folding.compiled_model(layer_pass.model, model, notes.update)
    rescore = rescorer_for_inputs(model, ScoreFn(None, score), len(inputs))
    device = inputs[0].device
    bf16 = precision == "bf16"

    def scores(first: Tensor, rows: Tensor) -> Tensor:
        if first.dim() == 4:
            first = first.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            return rescore((first, *(t[rows] for t in inputs[1:])), rows).float()

    return scores
